"""parse_sites: the table of MetaGPT 0.7's parse sites holds for the installed MetaGPT 0.7.7 -- each site's function
exists with the locals and module globals the formats fix reads -- and the text each site's shape is written as is
what MetaGPT's own parser reads."""

from __future__ import annotations

import importlib
import inspect
import json
import typing

import pytest

from conftest import metagpt_with_placeholder_config
from metagpt_vllm_fix import parse_sites
from metagpt_vllm_fix.parse_sites import SITES, markdown_text

metagpt_with_placeholder_config()
from metagpt.actions.project_management_an import PM_NODE  # noqa: E402
from metagpt.actions.write_prd_an import WRITE_PRD_NODE  # noqa: E402
from metagpt.utils.common import OutputParser  # noqa: E402

INSTALLED = "0.7.7"


def here(site: parse_sites.Site) -> str:
    """The module of a site in the installed 0.7.7."""
    (module,) = [module for module, versions in site.modules if versions.endswith(INSTALLED)]
    return module


@pytest.mark.parametrize("site", SITES, ids=lambda site: site.name)
def test_each_sites_function_is_where_the_table_says(site):
    owner, _, name = site.function.partition(".")
    function = getattr(getattr(importlib.import_module(here(site)), owner), name)
    assert callable(function)
    assert ("aask" in inspect.unwrap(function).__code__.co_names) == (site.function == "ActionNode._aask_v1")


def test_the_table_reads_what_action_node_aask_v1_has():
    from metagpt.actions import action_node

    function = inspect.unwrap(action_node.ActionNode._aask_v1)
    assert list(inspect.signature(function).parameters)[:4] == ["self", "prompt", "output_class_name",
                                                                "output_data_mapping"]
    assert "schema" in inspect.signature(function).parameters
    assert callable(action_node.llm_output_postprocess) and callable(action_node.OutputParser.parse_data_with_mapping)
    assert getattr(action_node, "TAG", None) == "CONTENT"
    assert "aask" in function.__code__.co_names  # it awaits llm.aask itself


def test_the_table_reads_what_write_plan_run_has():
    from metagpt.actions.di import write_plan
    from metagpt.strategy import planner

    assert "max_tasks" in inspect.signature(write_plan.WritePlan.run).parameters
    assert {"CodeParser", "precheck_update_plan_from_rsp", "Plan"} <= set(vars(write_plan))
    assert "_aask" in write_plan.WritePlan.run.__code__.co_names  # through Action._aask, a pass-through
    assert ("metagpt.actions.action", "_aask") in parse_sites.PASS_THROUGH
    assert "update_plan" in vars(planner.Planner) and "plan" in planner.Planner.model_fields


@pytest.mark.parametrize("node", [WRITE_PRD_NODE, PM_NODE], ids=["WritePRD", "WriteTasks"])
def test_markdown_sections_are_what_metagpts_markdown_parser_reads(node):
    mapping = node.get_mapping("auto")
    value = {key: (["a 'quoted' item", 'a "double" one'] if typing.get_origin(kind) is list else "text ## heading")
             for key, (kind, _) in mapping.items()}
    for key, (kind, _) in mapping.items():
        if typing.get_args(kind) and typing.get_origin(typing.get_args(kind)[0]) is list:  # a list of lists
            value[key] = [["P0", "first"], ["P1", "second"]]
    parsed = OutputParser.parse_data_with_mapping(markdown_text(value), mapping)
    instance = node.create_model_class(f"{node.key}_AN", mapping)(**parsed)
    dumped = instance.model_dump()
    assert {k: v for k, v in dumped.items() if isinstance(v, list)} == \
        {k: v for k, v in value.items() if isinstance(v, list)}
    assert all(dumped[k] == "text # heading" for k, v in value.items() if isinstance(v, str))  # "##" would split


def test_the_json_sites_text_is_what_llm_output_postprocess_reads():
    from metagpt.actions.action_node import llm_output_postprocess

    mapping = WRITE_PRD_NODE.get_mapping("auto")
    output_class = WRITE_PRD_NODE.create_model_class("WritePRD_AN", mapping)
    value = {key: [] if typing.get_origin(kind) is list else "x" for key, (kind, _) in mapping.items()}
    site = SITES[0]
    text = site.written_as.replace("{json}", json.dumps(value))
    output_class(**llm_output_postprocess(output=text, schema=output_class.model_json_schema(), req_key="[/CONTENT]"))


def test_sites_left_alone_say_who_handles_them():
    assert {site.handled_by for site in SITES} == {"formats", "tools", ""}
    assert all(site.kind for site in SITES if site.handled_by == "formats")
    assert not any(site.kind for site in SITES if site.handled_by != "formats")
