"""`python -m aha ...` (and `torchrun -m aha ...`) is the `aha` command."""

import sys

from aha.cli import main

sys.exit(main())
