"""Every checkpoint read is validated (issue 23): a damaged meta.json, trainer state, weights or
adapter config is one line naming the file and an earlier checkpoint to use - never a traceback,
never a silent resume - and nothing on disk changes (hashes compared before and after)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aha.cli import main
from reliability_kit import SMOKE, refused, tree

RUN_ARGS = [*SMOKE, "save_every=1", "keep_last=5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 3-step smoke run with checkpoints at steps 1, 2 and 3 (trained once for the module)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    assert main([*RUN_ARGS, f"output_dir={run}", "max_steps=3"]) == 0
    return run


def _meta(text):
    return lambda c: (c / "meta.json").write_text(text)


def _edit_state(change):
    def apply(c):
        state = torch.load(c / "trainer_state.pt", weights_only=True)
        change(state)
        torch.save(state, c / "trainer_state.pt")
    return apply


def _truncate(name):
    return lambda c: (c / name).write_bytes((c / name).read_bytes()[: (c / name).stat().st_size // 2])


def _empty_adapter(c):
    from safetensors.torch import save_file

    save_file({}, c / "adapter_model.safetensors")


# (corruption of step-3, the file the message must name, whether `aha eval --checkpoint` refuses it too)
CASES = {
    "meta not JSON": (_meta("{not json"), "meta.json", True),
    "meta a list": (_meta("[3]"), "meta.json", True),
    "meta null": (_meta("null"), "meta.json", True),
    "meta without step": (_meta('{"complete": true}'), "meta.json", True),
    "meta step a string": (_meta('{"step": "3", "complete": true}'), "meta.json", True),
    "meta step of another dir": (_meta('{"step": 7, "complete": true}'), "meta.json", False),  # eval: step unused
    "meta not complete": (_meta('{"step": 3, "complete": false}'), "meta.json", True),
    "meta unknown backend": (_meta('{"step": 3, "complete": true, "backend": 5}'), "meta.json", True),
    "state garbage": (lambda c: (c / "trainer_state.pt").write_bytes(b"garbage" * 100), "trainer_state.pt", False),
    "state empty": (lambda c: (c / "trainer_state.pt").write_bytes(b""), "trainer_state.pt", False),
    "state truncated": (_truncate("trainer_state.pt"), "trainer_state.pt", False),
    "state a list": (lambda c: torch.save([1, 2], c / "trainer_state.pt"), "trainer_state.pt", False),
    "state without optimizer": (_edit_state(lambda s: s.pop("optimizer")), "trainer_state.pt", False),
    "state without rng": (_edit_state(lambda s: s.pop("rng")), "trainer_state.pt", False),
    "state rng garbage": (_edit_state(lambda s: s.__setitem__("rng", [{"python": 1, "torch": "x"}])),
                          "trainer_state.pt", False),
    "state optimizer of another model": (_edit_state(lambda s: s.__setitem__("optimizer",
                                                                             {"state": {}, "param_groups": []})),
                                         "trainer_state.pt", False),
    "state of another step": (_edit_state(lambda s: s.__setitem__("step", 1)), "trainer_state.pt", False),
    "state without cursor": (_edit_state(lambda s: s.pop("cursor")), "trainer_state.pt", False),
    "state missing": (lambda c: (c / "trainer_state.pt").unlink(), "trainer_state.pt", False),
    "weights missing": (lambda c: (c / "adapter_model.safetensors").unlink(), "weights", True),
    "weights truncated": (_truncate("adapter_model.safetensors"), "adapter_model.safetensors", True),
    "weights empty": (_empty_adapter, "adapter_model.safetensors", True),
    "adapter config missing": (lambda c: (c / "adapter_config.json").unlink(), "adapter_config.json", True),
    "adapter config garbage": (lambda c: (c / "adapter_config.json").write_text("{"), "adapter_config.json", True),
    "config.yaml a list": (lambda c: (c / "config.yaml").write_text("- 1\n"), "config.yaml", True),
}


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_an_earlier_one(trained, tmp_path, capsys, case):
    corrupt, file, eval_refuses = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    step3 = run / "checkpoints" / "step-3"
    corrupt(step3)
    before = tree(run)
    line = refused(capsys, [*RUN_ARGS, f"output_dir={run}", "max_steps=5", "--resume"], file,
                   f"--resume {run / 'checkpoints' / 'step-2'}")
    assert "Traceback" not in line and tree(run) == before
    if eval_refuses:
        refused(capsys, ["eval", "--checkpoint", str(step3), "--limit", "1", "--json", str(tmp_path / "e.json")],
                file, f"--checkpoint {run / 'checkpoints' / 'step-2'}")
        assert tree(run) == before and not (tmp_path / "e.json").exists()


def test_with_no_whole_earlier_checkpoint_the_fix_is_another_path_or_overwrite(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for step in (1, 2, 3):
        (run / "checkpoints" / f"step-{step}" / "meta.json").write_text("[]")
    before = tree(run)
    refused(capsys, [*RUN_ARGS, f"output_dir={run}", "max_steps=5", "--resume"], "meta.json", "--overwrite")
    assert tree(run) == before


def test_the_undamaged_checkpoint_still_resumes(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main([*RUN_ARGS, f"output_dir={run}", "max_steps=4", "--resume"]) == 0
    assert json.loads((run / "checkpoints" / "step-4" / "meta.json").read_text())["step"] == 4


# ---- the JAX backend's checkpoints (optimizer.npz, jax_state.json) ----

JAX = [*RUN_ARGS, "backend=jax", "model=random:tiny-qwen2"]

JAX_CASES = {
    "state a list": (lambda c: (c / "jax_state.json").write_text("[1]"), "jax_state.json"),
    "state not JSON": (lambda c: (c / "jax_state.json").write_text("{"), "jax_state.json"),
    "state without cursor": (lambda c: (c / "jax_state.json").write_text('{"step": 2, "epoch": 0}'), "jax_state.json"),
    "optimizer garbage": (lambda c: (c / "optimizer.npz").write_bytes(b"garbage"), "optimizer.npz"),
    "optimizer truncated": (_truncate("optimizer.npz"), "optimizer.npz"),
    "adapter truncated": (_truncate("adapter_model.safetensors"), "adapter_model.safetensors"),
    "meta a list": (_meta("[2]"), "meta.json"),
}


@pytest.fixture(scope="module")
def jax_trained(tmp_path_factory) -> Path:
    pytest.importorskip("jax")
    run = tmp_path_factory.mktemp("jaxckpt") / "run"
    assert main([*JAX, f"output_dir={run}", "max_steps=2"]) == 0
    return run


@pytest.mark.parametrize("case", JAX_CASES)
def test_a_damaged_jax_checkpoint_is_one_line_naming_the_file(jax_trained, tmp_path, capsys, case):
    corrupt, file = JAX_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(jax_trained, run)
    corrupt(run / "checkpoints" / "step-2")
    before = tree(run)
    refused(capsys, [*JAX, f"output_dir={run}", "max_steps=3", "--resume"], file,
            f"--resume {run / 'checkpoints' / 'step-1'}")
    assert tree(run) == before
