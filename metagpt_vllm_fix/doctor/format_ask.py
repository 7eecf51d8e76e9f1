"""The doctor's third live ask: one ActionNode fill, as MetaGPT sends it, and whether MetaGPT can parse the answer.

A server that answers may still answer in a form MetaGPT cannot parse (CONTEXT.md §16): every ActionNode fill --
WritePRD, WriteDesign, WriteTasks -- wants JSON between ``[CONTENT]`` and ``[/CONTENT]``, and a model that does not
comply makes MetaGPT ask the same prompt six times and stop. So the doctor fills MetaGPT's own ``WP_ISSUE_TYPE``
node (two short fields; WritePRD fills it for a project that has code) through the provider built from the user's
config, with the fixes as installed: one attempt of ``ActionNode._aask_v1`` as MetaGPT decorates it (its other five
attempts would ask the same prompt again). The fill is a whole generation, not a first token: on a CPU server it
takes the time the model takes to answer, within ``--timeout``.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from ..fixes import innermost
from ..fixes.formats import one_line
from .asking import AASK_TIMEOUT, SHOWN_CHARS, gather_after_chat, note_failure, shortened
from .facts import FORMAT, AskResult, Facts

NODE = "WP_ISSUE_TYPE_NODE"  #: in metagpt.actions.write_prd_an, every 0.7.x
CONTEXT = "## New Requirements\nThe program crashes on an empty list; it should print 'empty' instead."


async def _fill(llm: Any, result: AskResult) -> None:
    from metagpt import logs

    shown = logs._llm_stream_log  # MetaGPT prints a streamed answer to stdout; the report shows what it read
    logs.set_llm_stream_logfunc(lambda piece: None)
    try:  # MetaGPT's own usage count prints to stdout too with the usage fix off ("Warning: model not found")
        with contextlib.redirect_stdout(io.StringIO()):
            await _fill_once(llm, result)
    finally:
        logs.set_llm_stream_logfunc(shown)


async def _fill_once(llm: Any, result: AskResult) -> None:
    import openai
    from metagpt.actions import write_prd_an
    from metagpt.actions.action_node import ActionNode
    from tenacity import stop_after_attempt

    node = getattr(write_prd_an, NODE)
    node.set_llm(llm)
    prompt = node.compile(context=CONTEXT, schema="json", mode="auto")
    one_attempt = ActionNode._aask_v1.retry_with(stop=stop_after_attempt(1))
    try:
        content, parsed = await one_attempt(node, prompt, f"{node.key}_AN", node.get_mapping("auto"), schema="json",
                                            timeout=AASK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001  (a parse failure is the finding; a request's is the ask's)
        inner = innermost(exc)
        if isinstance(inner, (openai.APIError, TimeoutError)):
            note_failure(result, inner)
            return
        result.answered = True
        result.unparsed = one_line(inner)
        return
    result.answered = True
    result.first_token = content[:SHOWN_CHARS]
    result.reads = shortened(parsed.model_dump(), SHOWN_CHARS * 3)


def gather_format(facts: Facts, scratch: Path, deadline: float) -> Facts:
    """``asks["format"]``: an ActionNode fill as MetaGPT runs in this environment send it."""
    return gather_after_chat(facts, scratch, deadline, _fill, FORMAT, ("metagpt.actions.write_prd_an",))
