"""One probe set for any vLLM-compatible server: requests, and what of each answer must match between servers.

The conformance tests send it to a real vLLM and to the emulator and compare the ``fingerprint`` of each
answer: status, content type, error-body shape, error type/param, the error message with its numbers blanked
(token counts differ between tokenizers), and for streams where the usage arrives. ``python tests/probes.py URL``
prints the fingerprints of a running server as JSON (how ``observed`` snapshots are made).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx

KEY = "token-abc123"
MODEL = "meta-llama/Llama-2-7b-hf"
CONTEXT = 512  # the real server's --max-model-len, and the emulator's max_model_len in conformance runs
LONG_PROMPT = "hello " * 600  # more than 512 tokens for any tokenizer, and 600 "words" for the emulator


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    path: str
    auth: Optional[str] = f"Bearer {KEY}"  #: the Authorization header, None for none
    body: Any = None  #: JSON body (a dict), or raw bytes
    headers: dict[str, str] = field(default_factory=dict)


def chat(*, prompt: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}


PROBES: list[Probe] = [
    Probe("health", "GET", "/health", auth=None),
    Probe("version", "GET", "/version", auth=None),
    Probe("models, no key", "GET", "/v1/models", auth=None),
    Probe("models, Bearer key", "GET", "/v1/models"),
    Probe("models, bearer key (lower case)", "GET", "/v1/models", auth=f"bearer {KEY}"),
    Probe("models, BEARER key (upper case)", "GET", "/v1/models", auth=f"BEARER {KEY}"),
    Probe("models, Bearer + two spaces", "GET", "/v1/models", auth=f"Bearer  {KEY}"),
    Probe("models, Bearer sk-xxx (MetaGPT 0.7's key)", "GET", "/v1/models", auth="Bearer sk-xxx"),
    Probe("models, Basic key", "GET", "/v1/models", auth=f"Basic {KEY}"),
    Probe("models, key without scheme", "GET", "/v1/models", auth=KEY),
    Probe("chat, no key", "POST", "/v1/chat/completions", auth=None, body=chat()),
    Probe("chat, max_tokens 16", "POST", "/v1/chat/completions", body=chat(max_tokens=16)),
    Probe("chat, max_tokens > context", "POST", "/v1/chat/completions", body=chat(max_tokens=CONTEXT + 88)),
    Probe("chat, max_tokens == context", "POST", "/v1/chat/completions", body=chat(max_tokens=CONTEXT)),
    Probe("chat, prompt + max_tokens > context", "POST", "/v1/chat/completions",
          body=chat(prompt="Say hello to everyone here. " * 5, max_tokens=CONTEXT - 12)),
    Probe("chat, max_tokens 4096 (MetaGPT's default)", "POST", "/v1/chat/completions", body=chat(max_tokens=4096)),
    Probe("chat, no max_tokens", "POST", "/v1/chat/completions", body=chat()),
    Probe("chat, max_tokens 0", "POST", "/v1/chat/completions", body=chat(max_tokens=0)),
    Probe("chat, prompt alone > context, max_tokens 16", "POST", "/v1/chat/completions",
          body=chat(prompt=LONG_PROMPT, max_tokens=16)),
    Probe("chat, prompt alone > context, no max_tokens", "POST", "/v1/chat/completions",
          body=chat(prompt=LONG_PROMPT)),
    Probe("chat, unknown model", "POST", "/v1/chat/completions", body={**chat(), "model": "llama2"}),
    Probe("chat, unknown model and max_tokens 4096", "POST", "/v1/chat/completions",
          body={**chat(max_tokens=4096), "model": "llama2"}),
    Probe("chat, no messages", "POST", "/v1/chat/completions", body={"model": MODEL}),
    Probe("chat, invalid JSON", "POST", "/v1/chat/completions", body=b"{not json",
          headers={"Content-Type": "application/json"}),
    Probe("chat, stream_options without stream", "POST", "/v1/chat/completions",
          body=chat(max_tokens=8, stream_options={"include_usage": True})),
    Probe("chat, stream", "POST", "/v1/chat/completions", body=chat(max_tokens=8, stream=True)),
    Probe("chat, stream + include_usage", "POST", "/v1/chat/completions",
          body=chat(max_tokens=8, stream=True, stream_options={"include_usage": True})),
    Probe("chat, stream, max_tokens > context", "POST", "/v1/chat/completions",
          body=chat(max_tokens=CONTEXT + 88, stream=True)),
    Probe("chat, stream, prompt alone > context", "POST", "/v1/chat/completions",
          body=chat(prompt=LONG_PROMPT, stream=True)),
    Probe("completions, max_tokens 8", "POST", "/v1/completions",
          body={"model": MODEL, "prompt": "Hi", "max_tokens": 8}),
    Probe("completions, max_tokens > context", "POST", "/v1/completions",
          body={"model": MODEL, "prompt": "Hi", "max_tokens": CONTEXT + 88}),
    Probe("unknown /v1 path, no key", "GET", "/v1/nonexistent", auth=None),
    Probe("unknown /v1 path, key", "GET", "/v1/nonexistent"),
    Probe("wrong method on chat", "GET", "/v1/chat/completions"),
    Probe("OPTIONS models, no key", "OPTIONS", "/v1/models", auth=None),
]


def _shape(body: Any) -> str:
    """The structure of a JSON body: keys (nested one level), and the type of a lone value."""
    if isinstance(body, dict):
        parts = []
        for key in sorted(body):
            value = body[key]
            parts.append(f"{key}:{{{','.join(sorted(value))}}}" if isinstance(value, dict)
                         else f"{key}:{type(value).__name__}" if len(body) == 1 else key)
        return "{" + ",".join(parts) + "}"
    return type(body).__name__


def _blank_numbers(text: str) -> str:
    return re.sub(r"\d+", "#", text)


def _stream_facts(text: str) -> dict[str, Any]:
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return {
        "ends_with_done": bool(events) and events[-1] == "[DONE]",
        "usage_chunk_without_choices": any(c.get("choices") == [] and c.get("usage") for c in chunks),
        "usage_on_a_chunk_with_choices": any(c.get("choices") and c.get("usage") for c in chunks),
        "finish_reason_sent": any((c.get("choices") or [{}])[0].get("finish_reason") for c in chunks),
    }


def fingerprint(response: httpx.Response) -> dict[str, Any]:
    """What must agree between two servers for one probe."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    facts: dict[str, Any] = {"status": response.status_code, "content_type": content_type}
    if content_type == "text/event-stream":
        facts["stream"] = _stream_facts(response.text)
        return facts
    if content_type != "application/json":
        return facts
    body = response.json()
    facts["shape"] = _shape(body) if response.status_code >= 400 else None
    error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else \
        body if isinstance(body, dict) and body.get("object") == "error" else None
    if error is not None:
        facts.update(type=error.get("type"), param=error.get("param"), code=error.get("code"),
                     message=_blank_numbers(str(error.get("message")))
                     if error.get("type") != "Bad Request" else "(validation details)")
    elif response.status_code == 200 and isinstance(body, dict) and "choices" in body:
        facts["usage"] = sorted(body.get("usage") or {})
    return facts


def observe(url: str, probe: Probe, timeout: float = 120) -> dict[str, Any]:
    """Send one probe to the server at ``url`` (no /v1) and fingerprint the answer."""
    headers = dict(probe.headers)
    if probe.auth is not None:
        headers["Authorization"] = probe.auth
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(probe.body, bytes):
        kwargs["content"] = probe.body
    elif probe.body is not None:
        kwargs["json"] = probe.body
    with httpx.Client(base_url=url, timeout=timeout) as client:
        return fingerprint(client.request(probe.method, probe.path, **kwargs))


def observe_all(url: str) -> dict[str, dict[str, Any]]:
    return {probe.name: observe(url, probe) for probe in PROBES}


def differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per probe, the facts on which ``a`` and ``b`` disagree: {probe: {fact: (a's, b's)}}."""
    found = {}
    for name in a:
        keys = set(a[name]) | set(b.get(name, {}))
        diff = {k: (a[name].get(k), b.get(name, {}).get(k)) for k in sorted(keys)
                if a[name].get(k) != b.get(name, {}).get(k)}
        if diff:
            found[name] = diff
    return found


def _cell(facts: dict[str, Any]) -> str:
    if "stream" in facts:
        where = ("last chunk, no choices" if facts["stream"]["usage_chunk_without_choices"] else
                 "finish chunk" if facts["stream"]["usage_on_a_chunk_with_choices"] else "none")
        return f"{facts['status']} stream, usage: {where}"
    shape = facts.get("shape")
    kind = {"{error:str}": " Unauthorized", "{detail:str}": " detail"}.get(shape or "", "")
    if facts.get("type"):
        nested = "nested" if shape and shape.startswith("{error:{") else "flat"
        kind = f" {nested} {facts['type']}, param {facts.get('param')}"
    return f"{facts['status']}{kind}"


def table(real: dict[str, dict[str, Any]], emulated: dict[str, dict[str, Any]],
          old: dict[str, dict[str, Any]]) -> str:
    """Markdown: the real server's answer, whether the emulator's equals it, and the emulator as vLLM 0.3.3."""
    rows = ["| probe | real vLLM 0.32.0 | `serve --vllm-version 0.32.0` | `serve --vllm-version 0.3.3` |",
            "|---|---|---|---|"]
    for name in real:
        same = "same" if real[name] == emulated.get(name) else f"differs: {_cell(emulated.get(name, {}))}"
        rows.append(f"| {name} | {_cell(real[name])} | {same} | {_cell(old.get(name, {}))} |")
    return "\n".join(rows)


if __name__ == "__main__":
    # python tests/probes.py URL            fingerprints of the server at URL, as JSON
    # python tests/probes.py --table FILE   markdown table: recorded real fingerprints vs the emulator's
    if sys.argv[1] == "--table":
        from metagpt_vllm_fix.server import VLLMServer

        recorded = json.loads(open(sys.argv[2]).read())
        found = {}
        for version in ("0.32.0", "0.3.3"):
            with VLLMServer(api_keys=[KEY], max_model_len=CONTEXT, vllm_version=version) as server:
                found[version] = observe_all(server.url)
        print(table(recorded, found["0.32.0"], found["0.3.3"]))
    else:
        print(json.dumps(observe_all(sys.argv[1]), indent=1))
