"""``server-version`` and ``server``: which vLLM answers, and does it answer MetaGPT's key on its model list."""

from __future__ import annotations

from urllib.parse import urlsplit

from ...fixes.api_key import unsendable as unsendable_key
from ...masking import mask
from ...report import OK, PROBLEM, WARNING
from ..check import Verdict, check
from ..facts import Facts, ServerFacts, ServerGeneration
from ..probe import OPENAI_COMPATIBLE

PLACEHOLDER_SENT = ("MetaGPT's placeholder 'sk-xxx', which open_llm sends because llm.api_key cannot travel in an "
                    "HTTP header (see the api-key-control line)")


def describe_server(server: ServerGeneration) -> str:
    """The doctor's ``server`` line: which release answered, and the ``max_tokens`` rule that follows."""
    rule = server.generation.context_rule
    if not server.assumed:
        return f"server: vLLM {server.version}, generation {server.generation.name}: {rule}"
    return (f"server: {server.why}: a vLLM of the {server.generation.name} era or another OpenAI-compatible "
            f"server; assuming vLLM {server.generation.name}'s rules: {rule}")


@check("server-version", "the server's vLLM release (GET /version) and the max_tokens rule it plays by",
       needs=("server",))
def server_version(facts: Facts) -> list[Verdict]:
    found = facts.server
    if found is None or found.generation is None:
        return []
    return [(OK, describe_server(found.generation))]


def _refused(found: ServerFacts, key: str, base_url: str) -> str:
    """The 401 line: whose key, and whether the server itself is up."""
    if found.health == 200:
        up = "The server itself is up: /health answers 200 without a key, so only the key is refused."
    elif found.health is None:
        up = "(/health did not answer either.)"
    else:
        up = f"(/health answers {found.health}.)"
    if found.placeholder:
        return f"401 Unauthorized from {found.url}: the server requires a key, and got {PLACEHOLDER_SENT}. {up}"
    if urlsplit(base_url).hostname == "api.openai.com":
        return f"401 Unauthorized from {found.url}: OpenAI refuses api_key {mask(key)}."
    return (f"401 Unauthorized from {found.url}: the server refuses api_key {mask(key)}. It does not match the key "
            "the server was started with: its --api-key option, or its VLLM_API_KEY environment variable (vLLM 0.3 "
            f"uses VLLM_API_KEY when both are set). Fix llm.api_key or the server's key. {up}")


@check("server", "GET {base_url}/models with the key MetaGPT sends: reachable, the key taken, the models served",
       needs=("server",))
def server(facts: Facts) -> list[Verdict]:
    config, found = facts.config, facts.server
    if config is None:
        return []
    if config.api_type not in OPENAI_COMPATIBLE:
        return [(WARNING, f"server not probed: the doctor checks OpenAI-compatible servers (api_type open_llm or "
                          f"openai), not {config.api_type}.")]
    if found is None:
        if unsendable_key(config.api_key):
            return [(WARNING, f"server not probed: MetaGPT's {config.api_type} provider cannot send llm.api_key "
                              "(see the api-key-control line).")]
        return []
    if not found.reachable:
        return [(PROBLEM, f"server unreachable: {found.message}")]
    if found.status == 401:
        return [(PROBLEM, _refused(found, config.api_key.strip(), config.base_url))]
    if found.status == 404:
        return [(PROBLEM, f"404 from {found.url}: no model list there. vLLM serves the OpenAI API under /v1: "
                          "base_url should look like http://HOST:8000/v1")]
    if found.status != 200 or found.error:
        return [(PROBLEM, f"{found.url} answered {found.status}: {found.message or f'HTTP {found.status}'}")]
    shown = ", ".join(found.models) if found.models else "(none)"
    if found.placeholder:
        return [(OK, f"server answers {PLACEHOLDER_SENT}, as it checks no key: {found.url} -> 200, serves {shown}")]
    return [(OK, f"server answers with this key: {found.url} -> 200, serves {shown}")]
