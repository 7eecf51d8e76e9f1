"""``fixes`` and ``httpx``: each fix's state here, and an httpx that MetaGPT 0.7's openai pin cannot use."""

from __future__ import annotations

from collections.abc import Sequence

from ..._activation import DISABLE, FixStatus
from ...report import OK, PROBLEM, WARNING
from ..check import Verdict, check
from ..facts import Facts


def fixes_verdict(fixes: Sequence[FixStatus], automatic: bool, unknown: Sequence[str] = ()) -> tuple[str, str]:
    """The ``fixes`` line: each fix and its state; a warning for a refused fix or a word naming no fix."""
    parts = []
    for fix in fixes:
        if fix.state == "off":
            parts.append(f"{fix.name} off ({DISABLE})")
        elif fix.state == "refused":
            parts.append(f"{fix.name} refused ({fix.reason})")
        else:
            parts.append(f"{fix.name} {fix.state}")
    message = "fixes: " + (", ".join(parts) or "none")
    if not automatic:
        message += " (in processes that `import metagpt_vllm_fix`; automatic activation is off)"
    if unknown:
        message += (f"; {DISABLE} names no fix: {', '.join(w[:20] for w in unknown[:5])} "
                    f"(the fixes are {', '.join(f.name for f in fixes)})")
    level = WARNING if unknown or any(f.state == "refused" for f in fixes) else OK
    return level, message


def httpx_verdict(version: str, fix_on: bool, why_not: str = "") -> tuple[str, str]:
    """The ``httpx`` line, for an httpx that no longer takes ``proxies=`` (0.28+)."""
    what = f"httpx {version} no longer takes proxies=, which openai 1.6.0 (MetaGPT 0.7's pin) passes"
    if fix_on:
        return OK, f"{what}; the httpx fix builds open_llm's HTTP client for it"
    return PROBLEM, (f"{what}: LLM() raises TypeError: AsyncClient.__init__() got an unexpected keyword argument "
                     f"'proxies' (the httpx fix is not in effect: {why_not}). Let the fix act, or install httpx<0.28.")


def _patching(facts: Facts) -> bool:
    """MetaGPT is one the plugin patches (0.7.x) and the plugin found it so."""
    st = facts.status
    return facts.metagpt is not None and facts.metagpt.supported and st is not None \
        and st.code in ("supported", "removed")


@check("fixes", "each fix and its state (active, pending, off, refused, idle); words in METAGPT_VLLM_FIX_DISABLE "
                "that name no fix", needs=("plugin",))
def fixes(facts: Facts) -> list[Verdict]:
    if not _patching(facts) or facts.plugin is None:
        return []
    st = facts.plugin.status
    return [fixes_verdict(st.fixes, st.automatic, facts.plugin.unknown_disable)]


@check("httpx", "for open_llm on an httpx without proxies= (0.28+): is the httpx fix in effect",
       needs=("config", "plugin"))
def httpx(facts: Facts) -> list[Verdict]:
    if facts.metagpt is None or not facts.metagpt.supported or facts.api_type != "open_llm" or facts.plugin is None:
        return []
    if facts.plugin.httpx_version is None:  # it takes proxies=: the installed httpx does not matter
        return []
    return [httpx_verdict(facts.plugin.httpx_version, *facts.fix_on("httpx"))]
