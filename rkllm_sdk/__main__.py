"""``python -m rkllm_sdk``: the ``rkllm`` command."""

import sys

from .cli import main

sys.exit(main())
