"""The optional dependencies' windows admit the versions the project is checked on."""

from __future__ import annotations

import importlib.metadata
import tomllib

import pytest
from packaging.requirements import Requirement

from conftest import REPO

EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def spec(extra: str, name: str):
    (req,) = [Requirement(r) for r in EXTRAS[extra] if Requirement(r).name == name]
    return req.specifier


@pytest.mark.parametrize("extra", ["jax", "dev"])
def test_the_jax_window_admits_the_gpu_machines_and_pypis_jax(extra):
    """0.11.2: the GPU machines this project is checked on; 0.12: PyPI's newest when the window was set."""
    for version in ("0.6.0", "0.10.2", "0.11.2", "0.12.0"):
        assert spec(extra, "jax").contains(version), (extra, version)


def test_the_installed_jax_is_inside_the_window():
    try:
        installed = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("jax is not installed")
    assert spec("jax", "jax").contains(installed)
