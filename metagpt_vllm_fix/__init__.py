"""metagpt-vllm-fix: MetaGPT 0.7's ``open_llm`` provider works against your vLLM, with your config as written.

Three fixes, each with a name and an off switch (``METAGPT_VLLM_FIX_DISABLE=max_tokens,usage``): ``api_key``
(send ``llm.api_key``, not "sk-xxx"), ``max_tokens`` (a ``max_tokens`` that does not fit the server's context is
left out) and ``usage`` (token counts from the server, no tiktoken download on the request path).

Importing this package applies the fix (now, or when ``metagpt.provider.open_llm_api`` is imported).
Installed with pip, it is also applied automatically in every interpreter of the environment through a
tiny start-up hook; ``METAGPT_VLLM_FIX=0`` turns that off, ``METAGPT_VLLM_FIX=strict`` makes a failure loud.
"""

from ._activation import FixStatus, PatchRefused, Status, apply, remove, status
from ._activation import module_loaded as on_import
from .fixes.api_key import InvalidApiKey

__version__ = "0.2.0.dev0"  # released versions: CHANGELOG.md
__all__ = ["FixStatus", "InvalidApiKey", "PatchRefused", "Status", "apply", "on_import", "remove", "status",
           "__version__"]

apply()
