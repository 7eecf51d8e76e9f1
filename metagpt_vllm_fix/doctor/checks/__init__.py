"""The checks, in the order the report shows them: the environment and the config first, then the slow ones that
wait on the server, MetaGPT's own request (``ask``) among them, the rule-based verdicts around it."""

from __future__ import annotations

from ..check import Check
from . import api_key, ask, base_url, config, fixes, formats, function_call, max_token, metagpt, model, server, tiktoken

CHECKS: tuple[Check, ...] = (
    metagpt.metagpt,
    metagpt.activation,
    fixes.fixes,
    fixes.httpx,
    config.config,
    config.config_files,
    config.llm,
    api_key.api_key_whitespace,
    api_key.api_key_control,
    base_url.cleartext,
    base_url.api_type,
    api_key.provider,
    server.server_version,
    server.server,
    model.model,
    max_token.max_token,
    ask.ask,
    function_call.function_call,
    formats.formats,
    tiktoken.tiktoken,
)
BY_NAME = {c.name: c for c in CHECKS}
