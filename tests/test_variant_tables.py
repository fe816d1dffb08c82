"""The loss's variant tables (aha/variants.py): every row a documented function and an allowed value,
the README's variants table naming exactly the rows, a toy variant added through its table alone, and
backend=jax refusing a row it was not written for."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

from aha import variants
from aha.config import AlgoConfig

TABLES = {"algo.baseline": variants.BASELINES, "algo.scale_rewards": variants.SCALES, "algo.ratio": variants.RATIOS,
          "algo.surrogate": variants.SURROGATES, "algo.loss_agg": variants.AGGREGATIONS,
          "algo.rollout_correction": variants.ROLLOUT_CORRECTIONS,
          "algo.rollout_correction_level": variants.ROLLOUT_CORRECTION_LEVELS}


@pytest.mark.parametrize("key", TABLES)
def test_every_table_row_is_a_documented_function_and_an_allowed_value(key):
    from aha.validation import _CHOICES

    table = TABLES[key]
    for ref in table.values():
        module, function = ref.split(":")
        assert (getattr(importlib.import_module(module), function).__doc__ or "").strip(), ref
    extra = {"none"} if key == "algo.rollout_correction" else set()  # none: measured, not corrected
    assert set(_CHOICES[key]) == set(table) | extra
    assert getattr(AlgoConfig(), key.split(".")[1]) in set(table) | extra  # the default is a row


def test_readme_variants_table_names_exactly_the_tables_rows():
    """README "Algorithm variants: paper -> config keys" names every row of every table, and nothing else:
    a row added without its README line, or a README line left after its row went, fails here."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Algorithm variants")[1].split("\n## ")[0]
    named: dict[str, set[str]] = {}
    for key, value in re.findall(r"`?(algo\.\w+)=([\w-]+)", section):
        named.setdefault(key, set()).add(value)
    for key, table in TABLES.items():
        assert named.get(key, set()) == set(table), key


TOY_CALLS: list[torch.Size] = []


def toy_surrogate(logp, ratio, adv, algo, xp=torch):
    """A made-up SURROGATES function: 1 - r A per token, REINFORCE's loss plus 1, so that its value is
    recognisable (1 - mean A = 1 under a group baseline) and its gradient moves the weights."""
    TOY_CALLS.append(ratio.shape)
    return 1 - ratio * adv, xp.zeros_like(ratio)


def test_a_variant_added_through_its_table_alone_trains(tmp_path: Path, toy_task, monkeypatch):
    """One function and one table row, nothing else: validation accepts the name, the loss runs it."""
    from aha.config import load_config
    from aha.errors import ConfigError
    from aha.log import read_jsonl
    from aha.train import train

    keys = [f"output_dir={tmp_path}", "task=toy", "tensorboard=false", "max_steps=1", "save_every=0", "probe_every=0",
            "eval_every=0", "rollout.max_new_tokens=8", "algo.surrogate=toy"]
    with pytest.raises(ConfigError, match="'algo.surrogate': 'toy' is not one of clip, reinforce"):
        load_config("smoke", keys)
    monkeypatch.setitem(variants.SURROGATES, "toy", f"{__name__}:toy_surrogate")
    TOY_CALLS.clear()
    (row,) = read_jsonl(train(load_config("smoke", keys)) / "metrics.jsonl")
    assert TOY_CALLS  # the update ran the toy
    assert row["loss"] == pytest.approx(1.0, abs=1e-5)  # sum over completions of (1 - A_i) / n, A summing to 0
    assert row["clip_frac"] == 0 and row["grad_norm"] > 0  # a gradient, so the step moved the weights


@pytest.mark.parametrize("key,table", [("scale_rewards", variants.SCALES), ("loss_agg", variants.AGGREGATIONS)])
def test_backend_jax_refuses_a_row_it_was_not_written_for(key, table, monkeypatch):
    """The JAX loop runs the scales and aggregations it was written for; a row added to the table is a
    config error naming it under backend=jax (not a ValueError mid-run), and trains under torch."""
    from aha.config import load_config
    from aha.errors import ConfigError

    monkeypatch.setitem(table, "toy", table["none" if key == "scale_rewards" else "token"])
    load_config("smoke", [f"algo.{key}=toy"])  # torch: the table is the allowed values
    with pytest.raises(ConfigError, match=f"backend=jax does not implement algo.{key}=toy"):
        load_config("smoke", ["backend=jax", f"algo.{key}=toy"])
    load_config("smoke", ["backend=jax", f"algo.{key}={'none' if key == 'scale_rewards' else 'token'}"])
