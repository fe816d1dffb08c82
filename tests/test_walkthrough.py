"""docs/walkthrough.py, the one-GRPO-step notebook: it runs top to bottom as a script (on the
bundled SmolLM2-135M, CPU) and is a valid jupytext percent notebook of prose and code cells."""

from __future__ import annotations

import runpy

import pytest

from conftest import REPO

NOTEBOOK = REPO / "docs" / "walkthrough.py"


@pytest.mark.slow
def test_walkthrough_runs_top_to_bottom(capsys):
    runpy.run_path(str(NOTEBOOK), run_name="__main__")
    out = capsys.readouterr().out
    for line in ("prompt_ids (4, ", "advantages [", "ratio on completion tokens: [1.0]", "LoRA tensors moved",
                 "surrogate loss", "agreement of sign(advantage) and sign(change)"):
        assert line in out, line


def test_walkthrough_is_a_jupytext_notebook():
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(NOTEBOOK)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown" and kinds.count("code") >= 8 and kinds.count("markdown") >= 8
    # Each step calls the project's own functions, not a re-implementation.
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for call in ("load_policy(", "generate(", "task.score(", "group_advantages(", "completion_logprobs(",
                 "loss_weights(", "policy_loss(", "build_optimizer(", "optimizer.step()"):
        assert call in code, call
