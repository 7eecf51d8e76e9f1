"""``/v1/models``: the one served model's card, with its context length (what the doctor reads)."""
from __future__ import annotations

import time
import uuid

from aiohttp import web

from .responses import json_response
from .served import Served


async def models(served: Served, request: web.Request) -> web.Response:
    now = int(time.time())
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now,
        "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
        "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
        "organization": "*", "group": None, "is_blocking": False,
    }
    card = {"id": served.model, "object": "model", "created": now, "owned_by": "vllm", "root": served.model,
            "parent": None, "permission": [permission], "max_model_len": served.max_model_len}
    return json_response({"object": "list", "data": [card]})
