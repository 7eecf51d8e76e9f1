"""``ask``: what came back when the doctor asked the way MetaGPT asks (asking.py), and why not when nothing did."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Optional

from ...fixes.api_key import unsendable as unsendable_key
from ...gate import PLACEHOLDER as PLACEHOLDER_KEY
from ...report import OK, PROBLEM, WARNING
from ..check import Verdict, check
from ..facts import CHAT, AskResult, Facts, FixNote

#: fixes that stand in for something the server should be set up to do (a chat template that takes MetaGPT's
#: messages): an answer through them is a warning. The others' situations have their own rule-based line.
SERVER_SIDE = ("chat_template", "system_role")


def request_lines(result: AskResult) -> str:
    """The lines under a live ask's finding: each HTTP request with its status, then what each fix that acted said."""
    details = [f"  {exchange}" for exchange in result.exchanges]
    details += [f"  the {n.fix} fix acted: {unprefixed(n)}" for n in result.fixes]
    return "\n" + "\n".join(details or ["  (no HTTP request was sent)"])


def unprefixed(note: FixNote) -> str:
    """A fix's message without its own ``name:`` prefix (the line already names the fix)."""
    prefix = note.fix + ": "
    return note.message[len(prefix):] if note.message.startswith(prefix) else note.message


def _sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith(".") else text + "."


def explain(result: AskResult, off: Mapping[str, str], model: str = "", key_unsendable: bool = False,
            shown: Optional[Collection[str]] = None) -> str:
    """Why MetaGPT's call got no answer, and the remedy; ``off`` maps each fix not in effect to why;
    ``key_unsendable``: llm.api_key cannot travel in an HTTP header (open_llm sends 'sk-xxx' instead); ``shown``:
    the checks the report shows, which a sentence may point at (a check run alone says it all itself; None: any)."""
    shown = ("server", "model", "api-key-control") if shown is None else shown
    from ...vllm_versions import classify_refusal, is_system_role_refusal, is_template_missing

    message = result.message or ""
    if result.error == "timeout":
        return (f"{message}: a model on CPU, or a busy server, may need longer for its first token; try a larger "
                "--timeout, or check the server's log")
    if result.error in ("connect", "client", "empty"):
        return message
    status = result.status
    said = _sentence(f"The server answered {status}: {message}")
    if status == 401:
        sent_placeholder = any(e.authorization.endswith(" " + PLACEHOLDER_KEY) for e in result.exchanges)
        if sent_placeholder and key_unsendable:
            see = ": see the api-key-control line" if "api-key-control" in shown else \
                " (a line break, another control character or a non-ASCII character in it)"
            return (f"{said} MetaGPT sent its hard-coded 'sk-xxx', not llm.api_key, which an HTTP header cannot "
                    f"carry{see}.")
        if sent_placeholder:
            why = f" ({off['api_key']})" if "api_key" in off else ""
            return (f"{said} MetaGPT sent its hard-coded 'sk-xxx', not llm.api_key: the api_key fix is not in "
                    f"effect{why}.")
        see = ": see the server line above" if "server" in shown else \
            "; check llm.api_key against the server's --api-key (`metagpt-vllm-fix doctor server` says more)"
        return f"{said} The server refuses the configured key{see}."
    if status == 404:
        see = ": see the model line above" if "model" in shown else \
            "; set it to a name the server serves (`metagpt-vllm-fix doctor model` lists them)"
        return f"{said} The server does not serve llm.model {model!r}{see}."
    if status == 400 and is_template_missing(message):
        from ...chat_layout import choose
        from ...fixes.chat_template import remedy

        layout, _ = choose(model)
        why = f" and the chat_template fix is off ({off['chat_template']})" if "chat_template" in off else ""
        return f"{said} {model} has no chat template on this server{why}. Remedy: {remedy(layout)}."
    if status == 400 and is_system_role_refusal(message):
        why = f"; the system_role fix is off ({off['system_role']})" if "system_role" in off else ""
        return (f"{said} {model}'s chat template refuses the system message MetaGPT 0.7 always sends first{why}. "
                "Remedy: serve it with a chat template that accepts a system role, or let the system_role fix fold "
                "the system message into the first user message.")
    refusal = classify_refusal(message) if status == 400 else None
    if refusal is not None and refusal.kind == "max_tokens":
        size = f" (e.g. {max(1, refusal.context // 4)})" if refusal.context else ""
        why = f": the max_tokens fix is off ({off['max_tokens']})" if "max_tokens" in off else ""
        return (f"{said} MetaGPT 0.7 asks for max_tokens = llm.max_token, which does not fit the context{why}. "
                f"Set a smaller llm.max_token{size}.")
    return said


def ask_verdict(result: AskResult, off: Mapping[str, str], model: str = "", note: str = "",
                api_type: str = "open_llm", key_unsendable: bool = False,
                shown: Optional[Collection[str]] = None) -> tuple[str, str]:
    """(level, message) of the ``ask`` check: ok only when an answer came back. Continuation lines list each
    request with its status, then what each fix said."""
    what = (f"asked as MetaGPT does (its {api_type} provider from this config, system + user message, streamed"
            + (f"; {note})" if note else ")"))
    details = [f"  {exchange}" for exchange in result.exchanges]
    details += [f"  the {n.fix} fix acted: {unprefixed(n)}" for n in result.fixes]
    if not result.exchanges:
        details.append("  (no HTTP request was sent)")
    tail = "\n" + "\n".join(details)
    if result.answered:
        if result.first_token:
            got = f"an answer came back, first token {result.first_token!r} (the stream closed after it)"
        else:
            got = "an answer came back (empty)"
        acted = result.fixes_acted
        by = f", through the {' and '.join(acted)} fix{'es' if len(acted) > 1 else ''}" if acted else ""
        needs = [name for name in acted if name in SERVER_SIDE]
        if needs:
            return WARNING, (f"{what}: {got}{by}, in {result.seconds:g} s. Handled, at one refused round trip per "
                             f"request; without the {' and '.join(needs)} fix every request gets 400. The fix's "
                             f"line below says why and what to change on the server.{tail}")
        return OK, f"{what}: {got}{by}, in {result.seconds:g} s{tail}"
    return PROBLEM, f"{what}: no answer. {explain(result, off, model, key_unsendable, shown)}{tail}"


@check("ask", "MetaGPT's own streamed chat request, through its provider and the fixes as installed: does an answer "
              "come back", needs=("config", "plugin", "ask"))
def ask(facts: Facts) -> list[Verdict]:
    result, config = facts.asks.get(CHAT), facts.config
    if result is None or config is None or not result.asked:
        return []
    return [ask_verdict(result, facts.fixes_off(), config.model or "", result.note, config.api_type,
                        unsendable_key(config.api_key), facts.shown)]
