"""The context rule, by generation: how many tokens an answer may have, or the 400 the server sends instead."""
from __future__ import annotations

from typing import Any, Optional

from .errors import APIError
from .served import Served


def budget(served: Served, prompt_tokens: int, max_tokens: Optional[int], name: str = "max_tokens") -> int:
    """The room ``max_tokens`` (as the request named it) leaves a prompt of ``prompt_tokens``, or raises the 400."""
    gen, context = served.generation, served.max_model_len
    fields: dict[str, Any] = {"context": context, "prompt": prompt_tokens}

    def refuse(template: str, param: Optional[str], **more: int) -> APIError:
        return APIError(template.format(**fields, **more), gen.bad_request_type, param=param)

    if gen.clamps_max_tokens:  # 0.18+: max_tokens only bounded by the context, then clamped to the room left
        if max_tokens is not None and max_tokens < 1:
            raise APIError(f"{name} must be at least 1, got {max_tokens}. (parameter={name}, value={max_tokens})",
                           gen.bad_request_type, param=name)
        if max_tokens is not None and max_tokens > context:
            raise refuse(gen.max_tokens_message.replace("max_tokens", name), name, completion=max_tokens)
        if prompt_tokens >= context:  # it counts no further than one past the context ("at least")
            fields["prompt"] = min(prompt_tokens, context + 1)
            raise refuse(gen.prompt_message, gen.prompt_param)
        return min(context if max_tokens is None else max_tokens, context - prompt_tokens)
    if gen.checks_prompt_alone and max_tokens is None:  # 0.10 - 0.17 without max_tokens
        if prompt_tokens >= context:
            raise refuse(gen.prompt_message, gen.prompt_param)
        return context - prompt_tokens
    if max_tokens is None:  # 0.3 defaults to the room left, even when there is none
        max_tokens = context - prompt_tokens
    if prompt_tokens + max_tokens > context:
        raise refuse(gen.max_tokens_message, gen.max_tokens_param, completion=max_tokens,
                     total=prompt_tokens + max_tokens)
    if max_tokens < 1:  # SamplingParams' own check
        raise refuse(gen.prompt_message, gen.prompt_param, completion=max_tokens)
    return max_tokens
