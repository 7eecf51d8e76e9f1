"""``model``: is ``llm.model`` set, and does the server serve it?"""

from __future__ import annotations

from ...report import OK, PROBLEM
from ..check import Verdict, check
from ..facts import Facts, ServerFacts


def answered(found: ServerFacts) -> bool:
    """The model list came back (200, an OpenAI model list): what the server serves is known."""
    return found.reachable and found.status == 200 and not found.error


@check("model", "llm.model is set and among the served models", needs=("config", "server"))
def model(facts: Facts) -> list[Verdict]:
    config, found = facts.config, facts.server
    if config is None:
        return []
    if config.api_type == "open_llm" and not config.model:
        return [(PROBLEM, "llm.model is not set: MetaGPT sends no model name and the server rejects the request. "
                          "Set it to the served model's name.")]
    if found is None or not answered(found) or not config.model:
        return []
    if config.model in found.models:
        return [(OK, f"llm.model {config.model} is served")]
    shown = ", ".join(found.models) if found.models else "(none)"
    return [(PROBLEM, f"llm.model {config.model!r} is not served (the server serves: {shown}): requests get 404. "
                      f"Set llm.model to a served name, or start vLLM with --served-model-name {config.model}")]
