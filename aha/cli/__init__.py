"""The `aha` command: train | eval | play | report | export | countdown.

The arguments of every subcommand are in parser.py, what each does in commands.py. Expected
failures (bad config, missing model or data, corrupt checkpoint) print one clear line and exit 2;
AHA_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Callable

from aha.cli import commands
from aha.cli.parser import build_parser
from aha.errors import AhaError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": commands.train, "eval": commands.eval, "play": commands.play, "report": commands.report,
    "export": commands.export, "countdown": commands.countdown,
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
    from aha.fsio import os_error_line
    from aha.rundir import Stopped

    try:
        return int(COMMANDS[args.command](args) or 0)
    except (AhaError, FileNotFoundError, ValueError, OSError) as e:
        if os.environ.get("AHA_DEBUG"):
            raise
        # OSError: a full or read-only disk, a file where a directory should be: the path and the fix
        message = os_error_line(e) if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else str(e)
        print("aha: error: " + " ".join(line.strip() for line in message.splitlines() if line.strip()),
              file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM / Ctrl-C during training: the step finished and was saved
        print(f"aha: {e}{resume_hint(args)}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"aha: interrupted{resume_hint(args)}", file=sys.stderr)
        return 130


def resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted `aha train`: the same command with --resume."""
    run_dir = getattr(args, "run_dir", None)  # set by commands.train once the config is loaded
    if args.command != "train" or run_dir is None:
        return ""
    if not list(Path(run_dir).glob("checkpoints/step-*/meta.json")):
        return f"; no checkpoint was saved in {run_dir} yet"
    words = ["aha", "train", *(["-c", args.config] if args.config else []), *args.overrides, "--resume"]
    return f"; continue from the last checkpoint with: {shlex.join(words)}"


__all__ = ["COMMANDS", "build_parser", "main"]
