"""The `aha` command: train | eval | play | report | countdown.

The arguments of every subcommand are in parser.py, what each does in commands.py. Expected
failures (bad config, missing model or data, corrupt checkpoint) print one clear line and exit 2;
AHA_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable

from aha.cli import commands
from aha.cli.parser import build_parser
from aha.errors import AhaError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": commands.train, "eval": commands.eval, "play": commands.play, "report": commands.report,
    "countdown": commands.countdown,
}


def main(argv: list[str] | None = None) -> int:
    # Deprecation chatter from transformers/peft internals is not actionable for a user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    # key=value overrides may come after options too (`--overwrite lr=1e-5`), which argparse's
    # positional `nargs="*"` alone does not allow; collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        if args.resume and "=" in args.resume and not os.path.exists(args.resume):
            args.overrides.append(args.resume)  # `--resume max_steps=9`: an override, not a path
            args.resume = "latest"
        extra = [e for e in extra if e not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(COMMANDS[args.command](args) or 0)
    except (AhaError, FileNotFoundError, ValueError) as e:
        if os.environ.get("AHA_DEBUG"):
            raise
        print(f"aha: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aha: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "build_parser", "main"]
