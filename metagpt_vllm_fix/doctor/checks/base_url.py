"""``cleartext`` and ``api-type``: where the key goes, and whether MetaGPT treats that server as OpenAI."""

from __future__ import annotations

from urllib.parse import urlsplit

from ...report import WARNING
from ..check import Verdict, check
from ..facts import Facts
from ..probe import is_loopback


@check("cleartext", "plain http:// to a host that is not this machine: the key travels in clear text",
       needs=("config",))
def cleartext(facts: Facts) -> list[Verdict]:
    if facts.config is None:
        return []
    parts = urlsplit(facts.config.base_url)
    host = parts.hostname or ""
    if parts.scheme != "http" or not host or is_loopback(host):
        return []
    return [(WARNING, f"base_url uses plain http:// to {host}, which is not this machine: the key travels in clear "
                      "text. Prefer https (a TLS proxy in front of vLLM) or an SSH tunnel to 127.0.0.1.")]


@check("api-type", "api_type openai pointed at a server that is not OpenAI: open_llm is meant for it",
       needs=("config",))
def api_type(facts: Facts) -> list[Verdict]:
    if facts.config is None:
        return []
    host = urlsplit(facts.config.base_url).hostname or ""
    if facts.config.api_type != "openai" or not host or host == "api.openai.com":
        return []
    return [(WARNING, f"api_type openai pointed at {host} (not OpenAI): it works with vLLM, but MetaGPT counts "
                      "tokens and costs with OpenAI's tables ('model not found' warnings). api_type: open_llm is "
                      "meant for self-hosted servers.")]
