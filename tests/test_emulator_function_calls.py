"""The emulator's function calls and structured outputs, by generation (vllm-tools-facts.md §1-§3), over real HTTP.

What real vLLM 0.32.0 does with these requests is held by the conformance probes (tests/probes.py); here are the
other generations, as read from their wheels, the tool flags, and the constrained "model": a value valid against
the requested schema (checked with jsonschema), cut by ``max_tokens`` like the echo.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from conftest import metagpt_with_placeholder_config
from metagpt_vllm_fix.server import DEFAULT_MODEL, VLLMServer, build_app
from metagpt_vllm_fix.server.structured import instance

metagpt_with_placeholder_config()  # the Data Interpreter's modules load MetaGPT's config when imported
from metagpt.actions.di.debug_code import CODE_REFLECTION  # noqa: E402
from metagpt.prompts.di.write_analysis_code import ASSIGN_TASK_TYPE_CONFIG, SELECT_FUNCTION_TOOLS  # noqa: E402
from metagpt.provider.constant import GENERAL_FUNCTION_SCHEMA  # noqa: E402

EXECUTE = GENERAL_FUNCTION_SCHEMA
SCHEMA = EXECUTE["parameters"]
TOOLS = [{"type": "function", "function": EXECUTE}]
NAMED = {"type": "function", "function": {"name": "execute"}}
MESSAGES = [{"role": "system", "content": "You are Code Interpreter."}, {"role": "user", "content": "Plot it."}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

SCHEMAS = {
    **{f["name"]: f["parameters"] for f in (EXECUTE, ASSIGN_TASK_TYPE_CONFIG, SELECT_FUNCTION_TOOLS, CODE_REFLECTION)},
    "refs": {"$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 3}},
                                "required": ["id"]}},
             "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"},
                                                        "minItems": 2}}, "required": ["items"]},
    "bounds": {"type": "object", "required": ["short", "long", "n", "x", "flag", "nothing", "fixed", "tuple"],
               "properties": {"short": {"type": "string", "maxLength": 2}, "long": {"type": "string", "minLength": 9},
                              "n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20},
                              "x": {"type": "number", "minimum": -1.5}, "flag": {"type": "boolean"},
                              "nothing": {"type": "null"}, "fixed": {"const": {"a": [1]}},
                              "tuple": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}}},
    "branches": {"anyOf": [{"type": "object", "properties": {"name": {"enum": ["lookup"]}}, "required": ["name"]},
                           {"type": "string"}]},
    "all_of": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                         {"properties": {"b": {"type": ["integer", "null"]}}, "required": ["b"]}]},
}


@pytest.mark.parametrize("name", SCHEMAS)
def test_the_constrained_model_answers_a_value_valid_against_the_schema(name):
    jsonschema.validate(instance(SCHEMAS[name]), SCHEMAS[name])


def post(server: VLLMServer, path: str, **body):
    return httpx.post(server.url + path, json={"model": DEFAULT_MODEL, **body}, timeout=10)


def text_of(answer: dict) -> str:
    choice = answer["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def constrained(answer: dict, schema=SCHEMA) -> bool:
    try:
        jsonschema.validate(json.loads(text_of(answer)), schema)
    except ValueError:
        return False
    return True


# (field sent, endpoint) -> does it constrain the answer, per played release (facts §1a, §1b)
FIELDS = {
    "guided_json": lambda: {"guided_json": SCHEMA},
    "structured_outputs": lambda: {"structured_outputs": {"json": SCHEMA}},
    "response_format": lambda: {"response_format": {"type": "json_schema",
                                                    "json_schema": {"name": "x", "schema": SCHEMA}}},
}
CONSTRAINS = {  # version: {(field, path)} that constrain; every other pair is ignored
    "0.3.3": {("guided_json", CHAT), ("guided_json", COMPLETIONS)},
    "0.10.2": {("guided_json", CHAT), ("guided_json", COMPLETIONS), ("response_format", CHAT)},
    "0.11.0": {("guided_json", CHAT), ("guided_json", COMPLETIONS), ("structured_outputs", CHAT),
               ("structured_outputs", COMPLETIONS), ("response_format", CHAT)},
    "0.32.0": {("structured_outputs", CHAT), ("structured_outputs", COMPLETIONS), ("response_format", CHAT),
               ("response_format", COMPLETIONS)},
}


@pytest.mark.parametrize("version", CONSTRAINS)
def test_each_generation_constrains_with_its_own_fields_and_ignores_the_others(version):
    found = set()
    with VLLMServer(vllm_version=version) as server:
        for field, make in FIELDS.items():
            for path in (CHAT, COMPLETIONS):
                body = {"messages": MESSAGES} if path == CHAT else {"prompt": "Plot it."}
                answer = post(server, path, **body, **make())
                assert answer.status_code == 200, answer.text
                if constrained(answer.json()):
                    found.add((field, path))
                else:
                    assert text_of(answer.json()).startswith("echo: ")
    assert found == CONSTRAINS[version]


@pytest.mark.parametrize("version", ["0.10.2", "0.11.0", "0.32.0"])
def test_a_json_schema_response_format_wins_over_the_other_fields(version):
    other = {"type": "object", "properties": {"task": {"enum": ["eda"]}}, "required": ["task"]}
    with VLLMServer(vllm_version=version) as server:
        answer = post(server, CHAT, messages=MESSAGES, guided_json=SCHEMA, structured_outputs={"json": SCHEMA},
                      response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": other}}).json()
    assert json.loads(text_of(answer)) == {"task": "eda"}


def test_0_11_structured_outputs_wins_over_guided_json():
    other = {"type": "object", "properties": {"task": {"enum": ["eda"]}}, "required": ["task"]}
    with VLLMServer(vllm_version="0.11.0") as server:
        answer = post(server, CHAT, messages=MESSAGES, guided_json=SCHEMA, structured_outputs={"json": other}).json()
    assert json.loads(text_of(answer)) == {"task": "eda"}


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_a_constrained_answer_is_cut_by_max_tokens_with_finish_length(path):
    body = {"messages": MESSAGES} if path == CHAT else {"prompt": "Plot it."}
    with VLLMServer() as server:
        whole = post(server, path, **body, structured_outputs={"json": SCHEMA}).json()
        cut = post(server, path, **body, structured_outputs={"json": SCHEMA}, max_tokens=2).json()
    assert whole["choices"][0]["finish_reason"] == "stop" and constrained(whole)
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 2
    assert text_of(whole).startswith(text_of(cut)) and not constrained(cut)


def test_tools_by_generation_without_tool_flags():
    """0.3.3 ignores them (no tool_calls key); 0.10.2/0.11 refuse "auto" and answer a named choice with a guided
    call (content "", 32-hex id), their other answers carrying ``tool_calls: []``; 0.32 refuses both."""
    seen = {}
    for version in ("0.3.3", "0.10.2", "0.11.0", "0.32.0"):
        with VLLMServer(vllm_version=version) as server:
            auto = post(server, CHAT, messages=MESSAGES, tools=TOOLS)
            named = post(server, CHAT, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED)
            plain = post(server, CHAT, messages=MESSAGES)
        seen[version] = (auto.status_code, named.status_code, plain.json()["choices"][0]["message"].get("tool_calls"))
        if named.status_code == 200 and version != "0.3.3":
            message, finish = named.json()["choices"][0]["message"], named.json()["choices"][0]["finish_reason"]
            (call,) = message["tool_calls"]
            assert (message["content"], call["type"], call["function"]["name"], finish) == ("", "function", "execute",
                                                                                          "stop")
            assert call["id"].startswith("chatcmpl-tool-") and len(call["id"]) == len("chatcmpl-tool-") + 32
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMA)
    assert seen == {"0.3.3": (200, 200, None), "0.10.2": (400, 200, []), "0.11.0": (400, 200, []),
                    "0.32.0": (400, 400, None)}


@pytest.mark.parametrize("version,id_hex", [("0.10.2", 32), ("0.32.0", 16)])
def test_a_server_with_tool_flags_calls_the_first_tool_or_the_named_one(version, id_hex):
    lookup = {"name": "lookup", "parameters": {"type": "object", "properties": {"word": {"type": "string"}},
                                               "required": ["word"]}}
    tools = [*TOOLS, {"type": "function", "function": lookup}]
    with VLLMServer(vllm_version=version, tool_parser="hermes") as server:
        auto = post(server, CHAT, messages=MESSAGES, tools=tools).json()
        named = post(server, CHAT, messages=MESSAGES, tools=tools,
                     tool_choice={"type": "function", "function": {"name": "lookup"}}).json()
        none = post(server, CHAT, messages=MESSAGES, tools=tools, tool_choice="none").json()
    for answer, name, content, finish in ((auto, "execute", None, "tool_calls"), (named, "lookup", "", "stop")):
        message = answer["choices"][0]["message"]
        (call,) = message["tool_calls"]
        assert (call["function"]["name"], message["content"], answer["choices"][0]["finish_reason"]) == (
            name, content, finish)
        assert len(call["id"]) == len("chatcmpl-tool-") + id_hex
        jsonschema.validate(json.loads(call["function"]["arguments"]), tools[name == "lookup"]["function"]
                            ["parameters"])
    assert text_of(none).startswith("echo: ")


def test_a_streamed_tool_call_sends_its_id_and_name_then_its_arguments():
    with VLLMServer(tool_parser="hermes") as server, httpx.stream(
            "POST", server.url + CHAT, json={"model": DEFAULT_MODEL, "messages": MESSAGES, "tools": TOOLS,
                                             "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    first = deltas[1]["tool_calls"][0]
    assert (first["index"], first["function"]) == (0, {"name": "execute", "arguments": ""})
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:] if "tool_calls" in d)
    jsonschema.validate(json.loads(arguments), SCHEMA)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_tool_choice_needs_a_parser_and_0_3_has_no_tool_calling():
    with pytest.raises(ValueError, match="needs a tool_parser"):
        build_app(enable_auto_tool_choice=True)
    with pytest.raises(ValueError, match="has no tool calling"):
        build_app(vllm_version="0.3.3", tool_parser="hermes")
    with VLLMServer(tool_parser="hermes", enable_auto_tool_choice=False) as server:  # --tool-call-parser alone
        auto = post(server, CHAT, messages=MESSAGES, tools=TOOLS)
        named = post(server, CHAT, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED)
    assert (auto.status_code, named.status_code) == (400, 200)


def test_0_32_refuses_a_schema_it_cannot_compile_after_the_prompts_checks():
    unique = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": False, "contains": {}}}}
    with VLLMServer() as server:
        refused = post(server, COMPLETIONS, prompt="hi", structured_outputs={"json": unique})
        too_long = post(server, COMPLETIONS, prompt="hi", max_tokens=5000, structured_outputs={"json": unique})
    with VLLMServer(vllm_version="0.11.0") as server:
        older = post(server, COMPLETIONS, prompt="hi", structured_outputs={"json": unique})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == 'Grammar error: Unimplemented keys: ["contains", "uniqueItems"]'
    assert too_long.json()["error"]["param"] == "max_tokens"  # the max_tokens check comes first
    assert older.status_code == 200  # not read for the older generations: they compile it


def test_a_strict_server_refuses_vllms_own_fields_but_takes_response_format():
    with VLLMServer(reject_unknown_fields=True) as server:
        answers = {field: post(server, CHAT, messages=MESSAGES, **make()) for field, make in FIELDS.items()}
    assert {field: a.status_code for field, a in answers.items()} == {"guided_json": 400, "structured_outputs": 400,
                                                                       "response_format": 200}
    assert answers["structured_outputs"].json()["error"]["param"] == "structured_outputs"
