"""The doctor's facts: what was found out (gather.py), before anything is judged (checks/).

Every class here is frozen: the gatherers build the facts one after the other (each returns a new
:class:`Facts`), then the checks only read them. A check's unit test builds the facts it needs by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from .._activation import DISABLE, Status
from ..vllm_versions import GENERATIONS, Generation, for_version

CHAT = "chat"  #: the ask in ``Facts.asks`` that is aask's streamed chat request
FUNCTION_CALL = "aask_code"  #: the ask that is aask_code's function-call request (the Data Interpreter's)
FORMAT = "format"  #: the ask that is an ActionNode fill: does MetaGPT parse the answer


@dataclasses.dataclass(frozen=True)
class MetagptFacts:
    """The installed MetaGPT, by the gate's decision, and whether it imports."""

    version: Optional[str]
    code: str  #: the gate's code: supported, metagpt-absent, unsupported-old, fixed-upstream, ...
    supported: bool
    python: str = ""  #: the interpreter the doctor runs in (the environment it checks)
    import_error: Optional[str] = None  #: ``Type: message`` when ``import metagpt.config2`` failed

    @property
    def usable(self) -> bool:
        return self.code != "metagpt-absent" and self.import_error is None


@dataclasses.dataclass(frozen=True)
class ConfigFacts:
    """The ``llm:`` block as MetaGPT's own loader read it, and from which files."""

    api_type: str
    base_url: str
    model: Optional[str]
    api_key: str
    max_token: int
    calc_usage: bool
    proxy: Optional[str]
    files: tuple[Path, ...] = ()  #: the files read
    searched: tuple[Path, ...] = ()  #: the files MetaGPT looks at
    llm: Any = None  #: MetaGPT's own LLMConfig, for the gatherers that build its provider (checks read the fields)


@dataclasses.dataclass(frozen=True)
class PluginFacts:
    """The plugin in the doctor's own process, after MetaGPT's provider was imported."""

    status: Status
    switch: Optional[str]  #: METAGPT_VLLM_FIX as set (None: unset)
    unknown_disable: tuple[str, ...] = ()  #: words of METAGPT_VLLM_FIX_DISABLE that name no fix
    httpx_version: Optional[str] = None  #: the installed httpx when it no longer takes ``proxies=`` (0.28+)


@dataclasses.dataclass(frozen=True)
class ProviderFacts:
    """What MetaGPT's ``open_llm`` provider, built from this config here, sends as its key (or why it cannot be
    built)."""

    sent: Optional[str]
    error: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ServerGeneration:
    """Which vLLM rules the doctor applies to the server, and whether it knows or assumes them."""

    version: Optional[str]  #: what ``/version`` said, if anything
    generation: Generation
    assumed: bool  #: no usable ``/version``: the rules of vLLM 0.3 (MetaGPT 0.7's time) are assumed
    why: str = ""  #: why the version is assumed

    def as_json(self) -> dict[str, Any]:
        return {"vllm_version": self.version, "generation": self.generation.name, "version_assumed": self.assumed,
                "context_rule": self.generation.context_rule}


def server_generation(version: Optional[str], why: str = "no /version") -> ServerGeneration:
    """The generation whose rules apply: the one ``version`` belongs to, else (absent, unknown) vLLM 0.3's."""
    if version is not None:
        try:
            return ServerGeneration(version, for_version(version), False)
        except ValueError:
            why = f"/version says {version!r}, which is not a vLLM release this doctor knows"
    return ServerGeneration(version, GENERATIONS[0], True, why)


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    """What the server said to ``GET {base_url}/models`` (then ``/health`` after a 401, and ``/version``)."""

    url: str
    reachable: bool
    status: Optional[int] = None
    error: Optional[str] = None  #: refused, timeout, dns, tls, protocol, bad-url, connect, client, not-openai
    message: Optional[str] = None
    models: tuple[str, ...] = ()
    health: Optional[int] = None
    version_status: Optional[int] = None
    max_model_len: Optional[int] = None  #: of llm.model, when the model list says
    seconds: float = 0.0
    generation: Optional[ServerGeneration] = None  #: known once the server answered
    placeholder: bool = False  #: probed with MetaGPT's 'sk-xxx': llm.api_key cannot travel in an HTTP header

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "probed": True, "url": self.url, "reachable": self.reachable, "status": self.status, "error": self.error,
            "message": self.message, "models": list(self.models), "health": self.health,
            "version_status": self.version_status, "max_model_len": self.max_model_len, "seconds": self.seconds,
            "vllm_version": None, "generation": None, "version_assumed": None}
        if self.generation is not None:
            document.update(self.generation.as_json())
        return document


@dataclasses.dataclass(frozen=True)
class TiktokenFacts:
    """tiktoken's cl100k_base is not cached and ``llm.calc_usage`` is on: where it would go, and can it come."""

    path: Optional[Path]  #: the cache file (None: caching disabled by an empty TIKTOKEN_CACHE_DIR)
    proxy: bool  #: an HTTPS proxy is set in the environment
    reachable: Optional[bool] = None  #: its download host answered a connection (None: not tried, or no answer)


@dataclasses.dataclass
class Exchange:
    """One HTTP request the provider's client sent, and the status it got (None: no answer)."""

    method: str
    path: str
    authorization: str  #: as fit for printing: MetaGPT's placeholder in full, a key masked
    max_tokens: Optional[int] = None
    status: Optional[int] = None
    constrained: bool = False  #: the request carried a structured-output field (a fix held the answer to a shape)

    def __str__(self) -> str:
        asked = f", max_tokens {self.max_tokens}" if self.max_tokens is not None else ", no max_tokens"
        asked += ", constrained" if self.constrained else ""
        got = str(self.status) if self.status is not None else "no answer"
        if self.method != "POST":  # a GET (the tools fix's /version) asks for no tokens
            return f"{self.method} {self.path} -> {got}"
        return f"{self.method} {self.path} ({self.authorization}{asked}) -> {got}"


@dataclasses.dataclass(frozen=True)
class FixNote:
    """A log record a fix emitted while the doctor asked."""

    fix: str
    message: str


@dataclasses.dataclass
class AskResult:
    """What came of asking the server the way MetaGPT does."""

    asked: bool
    answered: bool = False
    first_token: Optional[str] = None  #: the first non-empty piece of the streamed answer
    exchanges: list[Exchange] = dataclasses.field(default_factory=list)
    fixes: list[FixNote] = dataclasses.field(default_factory=list)
    error: Optional[str] = None  #: status, timeout, connect, empty, client, not-asked
    status: Optional[int] = None  #: the HTTP status MetaGPT's call failed with
    message: Optional[str] = None  #: the server's error message, or what went wrong
    seconds: float = 0.0
    note: str = ""  #: how the provider was built when not as usual (e.g. no fix: automatic activation is off)
    tool_call: bool = False  #: (aask_code) the answer carried a tool call
    reads: Optional[str] = None  #: (aask_code, format) what MetaGPT read from the answer, as JSON, shortened
    unparsed: Optional[str] = None  #: (format) MetaGPT's parse error on the answer as sent, when there was one

    @property
    def fixes_acted(self) -> list[str]:
        return list(dict.fromkeys(note.fix for note in self.fixes))

    def as_json(self) -> dict[str, Any]:
        return {"asked": self.asked, "answered": self.answered, "first_token": self.first_token,
                "requests": [dataclasses.asdict(e) for e in self.exchanges],
                "fixes_acted": self.fixes_acted, "fix_messages": [dataclasses.asdict(n) for n in self.fixes],
                "error": self.error, "status": self.status, "message": self.message, "seconds": self.seconds}


def not_asked(why: str, note: str = "") -> AskResult:
    return AskResult(asked=False, error="not-asked", message=why, note=note)


def fix_in_effect(st: Optional[Status], name: str, api_type: Optional[str]) -> tuple[bool, str]:
    """(on, why not): does the named fix act on the MetaGPT runs this config drives, in this environment?"""
    if api_type != "open_llm":
        return False, f"the fixes act on api_type open_llm only, not {api_type}"
    if st is None or st.code not in ("supported", "removed"):
        return False, "the plugin is inactive"
    fix = next((f for f in st.fixes if f.name == name), None)
    if fix is None:
        return False, f"this plugin has no {name} fix"
    if fix.state == "off":
        return False, f"turned off by {DISABLE}"
    if fix.state not in ("active", "pending"):
        return False, f"the {name} fix is {fix.state}: {fix.reason}"
    if not st.automatic:
        return False, "automatic activation is off in this environment"
    return True, ""


@dataclasses.dataclass(frozen=True)
class Facts:
    """Everything the checks read. A field stays None when its gatherer did not run or found nothing to gather."""

    config_path: Optional[Path] = None  #: --config
    metagpt: Optional[MetagptFacts] = None
    config: Optional[ConfigFacts] = None
    config_error: Optional[str] = None  #: why MetaGPT cannot load the configuration (safe to print)
    plugin: Optional[PluginFacts] = None
    provider: Optional[ProviderFacts] = None
    server: Optional[ServerFacts] = None
    asks: Mapping[str, AskResult] = dataclasses.field(default_factory=dict)  #: MetaGPT's own requests, by kind
    shown: Optional[frozenset[str]] = None  #: the checks this report shows (a line may point at another only if shown;
    #: None: not known, as for a check judged on its own)
    tiktoken: Optional[TiktokenFacts] = None

    @property
    def api_type(self) -> Optional[str]:
        return self.config.api_type if self.config is not None else None

    @property
    def status(self) -> Optional[Status]:
        return self.plugin.status if self.plugin is not None else None

    def fix_on(self, name: str) -> tuple[bool, str]:
        """(on, why not) for the named fix, on the runs this config drives."""
        return fix_in_effect(self.status, name, self.api_type)

    def fixes_off(self) -> dict[str, str]:
        """Each fix of the plugin that is not in effect, and why."""
        fixes = self.status.fixes if self.status is not None else ()
        return {fix.name: why for fix in fixes for on, why in [self.fix_on(fix.name)] if not on}
