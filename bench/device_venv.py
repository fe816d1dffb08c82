"""Rehearse the GPU machine's Python stack on the CPU before a GPU session: build a virtualenv with the
device's versions, then run `bench/gpu_check.py --dry-run` and the CPU test suite in it.

    python bench/device_venv.py --full           # Python 3.12 + torch 2.11 (CPU wheel) + the device's pins
    python bench/device_venv.py --over-system    # this Python and torch, with the device's transformers/peft
    python bench/device_venv.py --over-system --no-suite -- tests/test_rollout.py   # the dry run, then these tests

The device (read 2026-11): Python 3.12.3, torch 2.11.0+cu130, transformers 5.17.0, peft 0.21.2,
JAX 0.11.2, accelerate 1.15.0, tokenizers 0.23.2, safetensors 0.8.0, numpy 2.5.2, huggingface_hub 1.33.0,
plus the wheels bench/gpu_wheels.py carries (bitsandbytes, trl, datasets, gguf), installed the same way.

--full needs a Python 3.12 (--python; pyenv's by default) and torch 2.11.0's CPU build, which is on the
PyTorch index (--torch-index, https://download.pytorch.org/whl/cpu), not on PyPI: PyPI's Linux torch is the
CUDA build, several GB with its nvidia-* wheels. Where that index cannot be reached, --over-system is the
closest rehearsal: a venv over this interpreter's packages (its torch and JAX stay), with the device's
transformers and peft on top, which is where the drift between library versions shows (the JAX 0.11 wheels
need Python 3.12, so JAX stays this machine's). Exit status: that of the first step that failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_PINS = {"torch": "2.11.0", "transformers": "5.17.0", "peft": "0.21.2", "jax": "0.11.2", "jaxlib": "0.11.2",
               "accelerate": "1.15.0", "tokenizers": "0.23.2", "safetensors": "0.8.0", "numpy": "2.5.2",
               "huggingface_hub": "1.33.0"}
OVER_SYSTEM = ["transformers", "peft"]  # what --over-system replaces; torch and JAX stay the interpreter's
# aha's other needs and the suite's (pyproject.toml: dependencies and the dev extra), unpinned.
REST = ["optax>=0.2.4,<0.3", "pyyaml", "tqdm", "tensorboard", "matplotlib", "gguf", "datasets", "pyarrow", "pytest",
        "hypothesis", "jupytext"]


def sh(cmd: list[str], **kw) -> int:
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    rc = subprocess.call(cmd, **kw)
    print(f"  (exit {rc}, {time.monotonic() - t0:.0f} s)", flush=True)
    return rc


def default_python() -> str:
    for p in (Path.home() / ".pyenv" / "versions").glob("3.12*/bin/python"):
        return str(p)
    return "python3.12"


def build(args: argparse.Namespace, venv: Path) -> int:
    python = sys.executable if args.over_system else args.python
    if not (venv / "bin" / "python").exists():
        flags = ["--system-site-packages"] if args.over_system else []
        if rc := sh([python, "-m", "venv", *flags, str(venv)]):
            return rc
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if args.over_system:
        return sh(pip + [f"{n}=={DEVICE_PINS[n]}" for n in OVER_SYSTEM])
    if rc := sh(pip + ["--index-url", args.torch_index, f"torch=={DEVICE_PINS['torch']}"]):
        return rc
    if rc := sh(pip + [f"{n}=={v}" for n, v in DEVICE_PINS.items() if n != "torch"] + REST):
        return rc
    wheels = sorted(str(p) for p in (REPO / ".gpu-wheels").glob("*.whl"))
    if wheels:  # as on the machine: offline, no dependencies, into the venv (not over what it has)
        return sh(pip + ["--no-index", "--no-deps", *wheels])
    print("no .gpu-wheels/ (python bench/gpu_wheels.py): bitsandbytes and trl are not in the rehearsal")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="Python 3.12 and every device pin, torch's CPU build")
    mode.add_argument("--over-system", action="store_true", help="this interpreter's packages + transformers, peft")
    ap.add_argument("--python", default=default_python(), help="--full: a Python 3.12")
    ap.add_argument("--torch-index", default="https://download.pytorch.org/whl/cpu", help="--full: torch's CPU wheels")
    ap.add_argument("--venv", type=Path, default=None, help="default /tmp/aha-device-venv-{full,over}")
    ap.add_argument("--no-dry-run", action="store_true", help="skip bench/gpu_check.py --dry-run")
    ap.add_argument("--no-suite", action="store_true", help="skip the test suite (tests named after -- still run)")
    ap.add_argument("tests", nargs="*", help="pytest arguments (default: the whole suite, tests/)")
    args = ap.parse_args(argv)
    venv = args.venv or Path(f"/tmp/aha-device-venv-{'full' if args.full else 'over'}")
    if rc := build(args, venv):
        print(f"building {venv} failed (exit {rc}): the lines above say which install", file=sys.stderr)
        return rc
    py = str(venv / "bin" / "python")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    sh([py, "-c", "import sys, torch, transformers, peft, jax; print('rehearsal:', sys.version.split()[0], "
                  "'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, "
                  "'jax', jax.__version__)"], cwd=REPO, env=env)
    rc = 0
    if not args.no_dry_run:
        rc = sh([py, "bench/gpu_check.py", "--dry-run", "--wheels", "", "--budget", "900", "--out",
                 str(venv / "dry-run")], cwd=REPO, env=env) or rc
    if args.tests or not args.no_suite:
        pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(args.tests or ["tests/"])]
        rc = sh(pytest, cwd=REPO, env=env) or rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
