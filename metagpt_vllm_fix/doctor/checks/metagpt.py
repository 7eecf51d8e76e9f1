"""``metagpt`` and ``activation``: is MetaGPT there and supported, and is the plugin applied in every run of it?"""

from __future__ import annotations

from pathlib import Path

from ...report import OK, PROBLEM, WARNING
from ..check import Verdict, check
from ..config_file import show_path
from ..facts import Facts


@check("metagpt", "MetaGPT's version, and whether the plugin patches it", needs=("config", "plugin"))
def metagpt(facts: Facts) -> list[Verdict]:
    found, st = facts.metagpt, facts.status
    if found is None:
        return []
    if found.code == "metagpt-absent":
        return [(PROBLEM, f"MetaGPT is not installed in this Python ({found.python}); there is no configuration to "
                          "check.")]
    if found.import_error is not None:
        return [(PROBLEM, f"MetaGPT {found.version} cannot be imported: {found.import_error}")]
    if st is None:
        return []
    if st.code in ("supported", "removed"):
        return [(OK, f"MetaGPT {st.metagpt_version}: supported; the plugin makes open_llm send llm.api_key instead "
                     "of the hard-coded 'sk-xxx'")]
    if st.code == "fixed-upstream":
        return [(OK, f"{st.reason} The plugin stays inactive.")]
    open_llm = facts.api_type == "open_llm"
    tail = " api_type open_llm will send 'sk-xxx'." if open_llm and st.code != "unsupported-old" else ""
    return [(PROBLEM if open_llm else WARNING, f"plugin inactive: {st.reason}{tail}")]


@check("activation", "automatic activation: the plugin's start-up file is installed and METAGPT_VLLM_FIX is not 0",
       needs=("config", "plugin"))
def activation(facts: Facts) -> list[Verdict]:
    if facts.metagpt is None or not facts.metagpt.supported or facts.plugin is None:
        return []
    st, raw = facts.plugin.status, facts.plugin.switch
    switch = f"METAGPT_VLLM_FIX={raw}" if raw is not None else "METAGPT_VLLM_FIX unset"
    level = PROBLEM if facts.api_type == "open_llm" else WARNING
    consequence = ("MetaGPT run without `import metagpt_vllm_fix` (e.g. the `metagpt` command) "
                   "sends api_key 'sk-xxx' and vLLM answers 401")
    if st.pth_file is None:
        return [(level, "automatic activation is not installed (no metagpt-vllm-fix.pth in this environment's "
                        f"site-packages): {consequence}. Reinstall with pip.")]
    if st.switch == "off":
        return [(level, f"automatic activation is off ({switch}): {consequence}.")]
    if st.switch == "unknown":
        return [(WARNING, f"{switch} is not a known value (1, 0, strict, on, off, ...); it is treated as 1 "
                          f"(automatic activation on, {st.pth_file}).")]
    strict = "; strict: a failure to patch raises" if st.switch == "strict" else ""
    return [(OK, f"automatic activation on in this environment ({show_path(Path(st.pth_file))}, {switch}{strict})")]
