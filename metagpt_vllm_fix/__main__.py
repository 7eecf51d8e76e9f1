"""``python -m metagpt_vllm_fix``: the same command line as the ``metagpt-vllm-fix`` script."""

import sys

from .cli import main

sys.exit(main())
