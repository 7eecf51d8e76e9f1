"""The names of the former ``metagpt_vllm_fix.doctor_ask``, for code written against it (``doctor.doctor_ask.X``):
the ask's facts (facts.py), how it is sent (asking.py) and what its answer means (checks/ask.py)."""

from __future__ import annotations

from .asking import AASK_TIMEOUT, PROMPT, Recorder, ask, messages_of
from .checks.ask import SERVER_SIDE, ask_verdict, explain
from .facts import AskResult, Exchange, FixNote, not_asked

__all__ = ["AASK_TIMEOUT", "PROMPT", "SERVER_SIDE", "AskResult", "Exchange", "FixNote", "Recorder", "ask",
           "ask_verdict", "explain", "messages_of", "not_asked"]
