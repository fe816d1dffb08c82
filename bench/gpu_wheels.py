"""Download the wheels that bench/gpu_check.py needs and the GPU machine lacks, for its Python 3.12 on
manylinux x86-64, into a git-ignored folder that the device tool carries along (no network there).

    python bench/gpu_wheels.py                  # -> .gpu-wheels/*.whl; checks them; prints the install line
    python bench/gpu_wheels.py --check-only --rehearse ~/.pyenv/versions/3.12.1/bin/python
                                                # the install line, offline, in a fresh venv of that Python

The machine (one H100 or H200, the same image, Python 3.12) already has torch 2.11 (CUDA 13), transformers, peft, accelerate,
JAX 0.11 and most of the scientific stack. It lacks bitsandbytes (QLoRA), trl (the baseline of
bench/step.py), gguf (an aha dependency) and datasets with two of its needs (trl imports it).
Never torch, jaxlib or JAX: the machine's own CUDA builds must stay, whatever the project's pins say
(aha itself is not installed there, it runs from the checkout). So every wheel is installed with
`--no-deps` into a folder of its own (`--target`), which shadows nothing the machine has:

    python3 -m pip install -q --no-index --no-deps --no-compile --target SITE .gpu-wheels/*.whl

(bench/gpu_check.py runs that line itself when the folder exists). This script checks that each
wheel's requirements are met by another wheel here or by a package the machine has, that no name
comes twice (two versions stop the whole install) and that the folder fits the device tool's 64 MiB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / ".gpu-wheels"
LIMIT_BYTES = 64 * 2**20  # what the device tool carries per call: the working tree and these together

# name -> pinned version, and why it travels.
WHEELS = {
    "bitsandbytes": "0.50.2",  # QLoRA's 4-bit kernels; ships libbitsandbytes_cuda130 for torch 2.11+cu130
    "trl": "1.16.0",  # GRPOTrainer, the baseline of bench/step.py (pyproject: trl>=1.16,<2)
    "datasets": "5.0.1",  # trl needs >= 4.7; pyarrow >= 21 like trl (5.2 wants 24); aha's GSM8K hub loader
    "dill": "0.4.1",  # datasets needs <0.4.2
    "multiprocess": "0.70.19",  # datasets needs <0.70.20
    "gguf": "0.19.0",  # aha's dependency (the GGUF path of the bundled model)
}
NEVER = {"torch", "jax", "jaxlib", "triton", "numpy"}  # the machine's own builds; never shadowed

# The machine's packages that these wheels' requirements name (its image's package list, read 2026-11;
# versions there mostly unknown: bench/gpu_check.py checks the version ranges on the machine itself).
ON_MACHINE = {
    "accelerate", "aiohttp", "filelock", "fsspec", "httpx", "huggingface-hub", "jinja2", "numpy", "packaging", "pandas", "psutil",
    "pyarrow", "pyyaml", "requests", "torch", "tqdm", "transformers", "xxhash",
}

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def install_command(wheel_dir: Path | str, site: Path | str, python: str = "python3") -> list[str]:
    """The one install line: offline, no dependencies resolved, into `site` (never over the machine's own)."""
    wheels = sorted(str(p) for p in Path(wheel_dir).glob("*.whl"))
    return [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check",
            "--target", str(site), *wheels]


def install_offline(wheel_dir: Path, site: Path, python: str = sys.executable) -> dict[str, Any]:
    """Run the install line (what bench/gpu_check.py starts with); skipped on a Python other than the 3.12 the
    wheels are for (a dry run elsewhere). -> {wheels, rc, seconds, output} or {wheels, skipped}."""
    wheels = sorted(p.name for p in wheel_dir.glob("*.whl"))
    out: dict[str, Any] = {"wheels": wheels}
    if wheels and sys.version_info[:2] != (3, 12):
        out["skipped"] = f"the wheels are for Python 3.12, this is {sys.version.split()[0]}"
    elif wheels:
        t0 = time.monotonic()
        r = subprocess.run(install_command(wheel_dir, site, python), capture_output=True, text=True, timeout=300)
        out.update(rc=r.returncode, seconds=round(time.monotonic() - t0, 1), output=(r.stdout + r.stderr)[-2000:])
    return out


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel, read from its METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = Parser().parsestr(z.read(meta).decode())
    return canonical(msg["Name"]), msg["Version"], msg.get_all("Requires-Dist") or []


def needed(requires: list[str]) -> list[str]:
    """The requirement names that apply on the machine (markers evaluated for Python 3.12 Linux, no extras)."""
    from packaging.requirements import Requirement

    out = []
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(TARGET):
            out.append(canonical(req.name))
    return out


def check(wheel_dir: Path, on_machine: set[str] = ON_MACHINE) -> tuple[list[str], dict[str, int]]:
    """(problems, size of each wheel). A problem: a name twice, torch/JAX among them, a requirement that
    neither another wheel nor the machine provides, or more than the device tool carries."""
    problems: list[str] = []
    sizes: dict[str, int] = {}
    metas = {}
    for path in sorted(wheel_dir.glob("*.whl")):
        name, version, requires = wheel_metadata(path)
        if name in metas:
            problems.append(f"{name} twice ({metas[name][0]} and {version}): keep one, or the install stops")
        metas[name] = (version, requires)
        sizes[path.name] = path.stat().st_size
        if name in NEVER:
            problems.append(f"{path.name}: {name} must come from the machine, never from this folder")
    for name, (_, requires) in metas.items():
        for dep in needed(requires):
            if dep not in metas and dep not in on_machine:
                problems.append(f"{name} needs {dep}, which is neither here nor on the machine: add it to WHEELS")
    total = sum(sizes.values())
    if total > LIMIT_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB of wheels: over the {LIMIT_BYTES / 2**20:.0f} MiB the tool carries")
    return problems, sizes


def tree_bytes() -> int:
    """Bytes of the files git tracks: they travel with the wheels, under the same limit."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return sum((REPO / f).stat().st_size for f in out.decode().split("\0") if f and (REPO / f).is_file())


def rehearse(python: str, wheel_dir: Path) -> None:
    """The install line, offline, with `python` (a 3.12 here) in a fresh virtualenv: what the machine will run."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aha-wheels-") as tmp:
        venv, site = Path(tmp) / "venv", Path(tmp) / "site"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null"}  # no index, no find-links from here
        subprocess.run(install_command(wheel_dir, site, str(venv / "bin" / "python")), check=True, env=env)
        got = sorted(p.name for p in site.glob("*.dist-info"))
        version = subprocess.run([str(venv / "bin" / "python"), "--version"], capture_output=True, text=True).stdout
        print(f"rehearsal: {version.strip()} venv, --no-index --no-deps --target: installed {', '.join(got)}")
        want = {f"{n}-{v}.dist-info" for n, v in WHEELS.items()}
        missing = want - {g.replace("_", "-") for g in got}
        if missing:
            raise SystemExit(f"rehearsal: not installed: {', '.join(sorted(missing))}")


def download(dest: Path) -> None:
    """pip download each pinned wheel (no dependencies) for the machine's platform; drop stale ones."""
    dest.mkdir(exist_ok=True)
    for path in dest.glob("*.whl"):
        name, version, _ = wheel_metadata(path)
        if WHEELS.get(name) != version:
            path.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(dest)]
    cmd += [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(cmd + [f"{name}=={version}" for name, version in WHEELS.items()], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", type=Path, default=DEST, help="the wheel folder (default: .gpu-wheels/)")
    ap.add_argument("--check-only", action="store_true", help="check the folder, download nothing")
    ap.add_argument("--rehearse", metavar="PYTHON", help="then install them offline in a fresh venv of PYTHON")
    args = ap.parse_args(argv)
    if not args.check_only:
        download(args.dest)
    problems, sizes = check(args.dest)
    for name, size in sizes.items():
        print(f"{size / 2**20:7.2f} MiB  {name}")
    total, tree = sum(sizes.values()), tree_bytes()
    print(f"{total / 2**20:7.2f} MiB  in {len(sizes)} wheels ({args.dest}); with the tracked files "
          f"({tree / 2**20:.2f} MiB) {(total + tree) / 2**20:.2f} MiB of the {LIMIT_BYTES / 2**20:.0f} MiB a call carries")
    if total + tree > LIMIT_BYTES:
        problems.append("the wheels and the tracked files together are over what one call carries")
    if args.rehearse:
        rehearse(args.rehearse, args.dest)
    print("install line: " + " ".join(install_command("", "/tmp/aha-gpu-site")) + f" {args.dest.name}/*.whl")
    for p in problems:
        print("problem:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
