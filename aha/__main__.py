"""`python -m aha ...` (and `torchrun -m aha ...`) is the `aha` command."""

import os
import sys

from aha.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun worker: skip the teardown that can abort it
    from aha.distributed import exit_process

    exit_process(code)
sys.exit(code)
