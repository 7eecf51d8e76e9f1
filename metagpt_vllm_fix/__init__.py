"""metagpt-vllm-fix: MetaGPT 0.7's ``open_llm`` provider sends the ``api_key`` you configured.

Importing this package applies the fix (now, or when ``metagpt.provider.open_llm_api`` is imported).
Installed with pip, it is also applied automatically in every interpreter of the environment through a
tiny start-up hook; ``METAGPT_VLLM_FIX=0`` turns that off, ``METAGPT_VLLM_FIX=strict`` makes a failure loud.
"""

from ._activation import PatchRefused, Status, apply, remove, status
from ._activation import module_loaded as on_import
from .patch import InvalidApiKey

__version__ = "0.1.0"
__all__ = ["InvalidApiKey", "PatchRefused", "Status", "apply", "on_import", "remove", "status", "__version__"]

apply()
