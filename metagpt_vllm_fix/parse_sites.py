"""Where MetaGPT 0.7 parses an answer into a fixed shape, in one table: which function asks, what it parses, and how
that shape is written as the text MetaGPT's own parser reads.

MetaGPT asks for its formats in words only and parses the answer itself; a model that does not comply makes the
parse raise (CONTEXT.md §16). The ``formats`` fix reads this table to recognise such an ask and, only when MetaGPT's
parser fails on the answer, asks again constrained to the shape. The facts come from the released wheels 0.7.0 -
0.7.7 (there is no 0.7.5), whose parsing code is byte-identical; only the Data Interpreter's modules move (``ci``
in 0.7.0, ``mi`` in 0.7.1 - 0.7.3, ``di`` from 0.7.4).

A site is recognised by the function that awaits ``llm.aask`` (found on the asking task's stack: MetaGPT's action
modules are still being imported when ``open_llm_api`` is patched, so they cannot be wrapped then) and read through
its own locals and module globals: the output class it builds, and the very parse functions it calls -- MetaGPT's
parser, never a copy of it. A site the table does not know is left alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Optional

__all__ = ["PASS_THROUGH", "SITES", "Asked", "Site", "asked_by", "markdown_text"]


@dataclass(frozen=True)
class Site:
    """One place where MetaGPT 0.7 parses an LLM answer."""

    name: str  #: for people: the log and the README
    modules: tuple[tuple[str, str], ...]  #: (module, MetaGPT versions it is in)
    function: str  #: the function that awaits the answer (``Class.method``)
    shape: str  #: what the parse wants
    written_as: str  #: the text a constrained answer is written back as ("" where the site is not this table's job)
    fails_with: str  #: what MetaGPT raises on an answer out of shape
    handled_by: str  #: "formats", "tools" (a function call), or "" (the parse cannot fail: left alone)
    kind: str = ""  #: how ``formats`` reads the site: "json" or "markdown" (an ActionNode fill), "plan"


ALL = "0.7.0 - 0.7.7"


def _di(module: str) -> tuple[tuple[str, str], ...]:
    """A Data Interpreter module by MetaGPT version: ``ci`` in 0.7.0, ``mi`` in 0.7.1 - 0.7.3, ``di`` from 0.7.4."""
    return ((f"metagpt.actions.ci.{module}", "0.7.0"), (f"metagpt.actions.mi.{module}", "0.7.1 - 0.7.3"),
            (f"metagpt.actions.di.{module}", "0.7.4 - 0.7.7"))


SITES: tuple[Site, ...] = (
    Site("ActionNode fill, schema json", (("metagpt.actions.action_node", ALL),), "ActionNode._aask_v1",
         "a JSON object of the node's output class, every field required (WritePRD, WriteDesign, WriteTasks, ...)",
         "[CONTENT]\n{json}\n[/CONTENT]",
         "RetryError(JSONDecodeError), ValidationError 'Missing fields'; _aask_v1 asks 6 times, then RetryError",
         "formats", "json"),
    Site("ActionNode fill, schema markdown", (("metagpt.actions.action_node", ALL),), "ActionNode._aask_v1",
         "'## Key' sections of the node's output class, lists as literals (prompt_schema: markdown)",
         "[CONTENT]\n## Key\nvalue\n...\n[/CONTENT]",
         "ValueError, IndexError, ValidationError 'Missing fields'; _aask_v1 asks 6 times, then RetryError",
         "formats", "markdown"),
    Site("Data Interpreter plan", _di("write_plan"), "WritePlan.run",
         "a JSON list of 1 to max_tasks tasks: task_id, dependent_task_ids, instruction (read by "
         "precheck_update_plan_from_rsp)",
         "```json\n[json]\n```",
         "JSONDecodeError, ValidationError, IndexError; Planner.update_plan asks 4 times, then raises",
         "formats", "plan"),
    Site("Data Interpreter code step", _di("write_analysis_code"), "WriteCodeWithoutTools.run",
         "a function call (execute), or content fenced as code", "", "a markdown cell recorded as run", "tools"),
    Site("Data Interpreter task types", _di("write_plan"), "WritePlan.assign_task_type",
         "a function call with task_type", "", "KeyError 'task_type'", "tools"),
    Site("Data Interpreter tool steps", _di("write_analysis_code"), "WriteCodeWithTools.run",
         "function calls with recommend_tools, then code", "", "KeyError, IndexError", "tools"),
    Site("Data Interpreter reflection", _di("debug_code"), "DebugCode.run",
         "a function call with reflection and improved_impl", "", "KeyError 'improved_impl'", "tools"),
    Site("Engineer code steps", (("metagpt.actions.write_code", ALL),), "WriteCode.write_code",
         "a fenced code block", "", "nothing: the whole answer is taken as the code", ""),
    Site("Engineer review", (("metagpt.actions.write_code_review", ALL),),
         "WriteCodeReview.write_code_review_and_rewrite", "'## Code Review Result' LGTM/LBTM", "",
         "nothing: an unreadable review asks for a rewrite", ""),
)
"""0.7 has no react-mode ``_think`` in the Data Interpreter (it plans and acts); its reflection is ``DebugCode``, a
function call. Sites outside the software company and the Data Interpreter (tutorial, invoice, docstring,
tree-of-thought, skill arguments) are not in the table: left alone."""

#: Functions between a site and ``llm.aask`` that only pass the ask on (``Action._aask``).
PASS_THROUGH = (("metagpt.actions.action", "_aask"),)


@dataclass
class Asked:
    """One ask of a known site, read from its frame: the shape, MetaGPT's own parse, and how to write the shape."""

    site: Site
    schema: dict[str, Any]  #: the shape as a JSON schema (before bounds)
    parse: Callable[[str], None]  #: MetaGPT's own parse of this site: raises exactly where MetaGPT would
    prefix: str  #: written before the constrained JSON ...
    suffix: str  #: ... and after it
    render: Optional[Callable[[Any], str]] = None  #: or the whole text from the JSON value (markdown sections)
    label: str = ""  #: this ask, for the log ("ActionNode WritePRD")
    loose: bool = True  #: the parse takes raw line breaks inside JSON strings (``strict=False``), as MetaGPT's do


def _module_of(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", ""))


def _sites_of(frame: FrameType) -> list[Site]:
    module, function = _module_of(frame), frame.f_code.co_name
    return [site for site in SITES if site.kind and site.function.split(".")[-1] == function
            and any(module == name for name, _ in site.modules)]


def asked_by(caller: Optional[FrameType]) -> Optional[Asked]:
    """The known site that called ``llm.aask`` from ``caller`` (directly, or through ``Action._aask``), read."""
    frame = caller
    while frame is not None and (_module_of(frame), frame.f_code.co_name) in PASS_THROUGH:
        frame = frame.f_back
    if frame is None:
        return None
    for site in _sites_of(frame):
        try:
            asked = _READERS[site.kind](site, frame)
        except Exception:  # noqa: BLE001  (a frame not shaped as 0.7's: the site is left alone)
            return None
        if asked is not None:
            return asked
    return None


def _action_node(site: Site, frame: FrameType) -> Optional[Asked]:
    """``ActionNode._aask_v1(self, prompt, output_class_name, output_data_mapping, images, system_msgs, schema)``."""
    local, glob = frame.f_locals, frame.f_globals
    json_schema = local.get("schema") == "json"  # _aask_v1 parses markdown for any other value
    if json_schema != (site.kind == "json"):
        return None  # the other row of the table
    node, mapping = local["self"], local["output_data_mapping"]
    output_class = node.create_model_class(local["output_class_name"], mapping)
    shape = output_class.model_json_schema()
    if json_schema:
        postprocess, tag = glob["llm_output_postprocess"], glob.get("TAG", "CONTENT")

        def parse(text: str) -> None:
            output_class(**postprocess(output=text, schema=shape, req_key=f"[/{tag}]"))

        return Asked(site, shape, parse, f"[{tag}]\n", f"\n[/{tag}]", label=f"ActionNode {node.key}")
    parser = glob["OutputParser"]

    def parse_markdown(text: str) -> None:
        output_class(**parser.parse_data_with_mapping(text, mapping))

    return Asked(site, shape, parse_markdown, "", "", render=markdown_text,
                 label=f"ActionNode {node.key} (markdown)")


def _planner_plan(frame: FrameType, plan_class: Any) -> Any:
    """The plan of the ``Planner.update_plan`` that asked (its precheck compares the answer with it), else a new one."""
    outer = frame.f_back
    for _ in range(4):
        if outer is None:
            break
        if outer.f_code.co_name == "update_plan" and _module_of(outer) == "metagpt.strategy.planner":
            return outer.f_locals["self"].plan
        outer = outer.f_back
    return plan_class(goal="")


def _plan(site: Site, frame: FrameType) -> Asked:
    """``WritePlan.run(self, context, max_tasks=5, use_tools=False)``; the Planner parses what it returns."""
    local, glob = frame.f_locals, frame.f_globals
    code_parser, precheck = glob["CodeParser"], glob["precheck_update_plan_from_rsp"]
    plan = _planner_plan(frame, glob["Plan"])
    max_tasks = local.get("max_tasks")
    max_tasks = max_tasks if isinstance(max_tasks, int) and max_tasks > 0 else None

    def parse(text: str) -> None:
        ok, error = precheck(code_parser.parse_code(block=None, text=text), plan)
        if not ok:
            raise error if isinstance(error, BaseException) else ValueError(str(error))

    return Asked(site, plan_shape(max_tasks or PLAN_TASKS), parse, "```json\n", "\n```",
                 label="the Data Interpreter's plan (WritePlan)", loose=False)  # rsp_to_tasks: plain json.loads


PLAN_TASKS = 5  #: WritePlan.run's own default for max_tasks
INSTRUCTION_CHARS = 200  #: a task's instruction: "one short phrase or sentence", WritePlan's prompt asks


def plan_shape(max_tasks: int) -> dict[str, Any]:
    """A plan of 1 to ``max_tasks`` tasks that ``update_plan_from_rsp`` takes whole: ids "1", "2", ... in order (the
    prompt: "can be an ordinal"), each depending only on tasks before it (MetaGPT sorts a plan by its dependencies
    and refuses one naming a task it does not hold), and an instruction of one short sentence."""
    def task(number: int) -> dict[str, Any]:
        earlier = [str(i) for i in range(1, number)]
        depends = ({"type": "array", "items": {"type": "string", "enum": earlier}, "maxItems": len(earlier)}
                   if earlier else {"type": "array", "maxItems": 0})
        return {"type": "object", "properties": {"task_id": {"const": str(number)}, "dependent_task_ids": depends,
                                                 "instruction": {"type": "string", "maxLength": INSTRUCTION_CHARS}}}

    return {"type": "array", "prefixItems": [task(i) for i in range(1, max(max_tasks, 1) + 1)], "minItems": 1}


_READERS: dict[str, Callable[[Site, FrameType], Optional[Asked]]] = {"json": _action_node, "markdown": _action_node,
                                                                      "plan": _plan}


def markdown_text(value: Any) -> str:
    """A JSON object as the ``## Key`` sections ``OutputParser.parse_data_with_mapping`` reads, inside [CONTENT].

    Lists are written as literals (``ast.literal_eval`` reads a JSON list of strings); a ``##`` inside a value would
    start a section of its own there, so it is written as ``#``.
    """
    sections = []
    for key, item in (value.items() if isinstance(value, Mapping) else ()):
        text = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
        sections.append(f"## {key}\n{text.replace('##', '#').strip()}\n")
    return "[CONTENT]\n" + "\n".join(sections) + "[/CONTENT]"


def caller_frame(depth: int = 2) -> Optional[FrameType]:
    """The frame ``depth`` levels up from the caller of this function (CPython keeps an awaiting coroutine's frame
    as the awaited one's ``f_back``)."""
    try:
        return sys._getframe(depth)
    except ValueError:
        return None
