from pathlib import Path

import pytest

from aha.config import CONFIG_DIR, Config, ConfigError, load_config

PRESETS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def test_required_presets_exist():
    for name in ["cpu-demo", "smoke", "rtx5090", "rtx4090", "gpu-16gb", "a100-h100", "countdown-gemma2"]:
        assert name in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config) and cfg.output_dir and cfg.model and cfg.task


def test_seed_presets_match_the_first_seed():
    r5090, r4090 = load_config("rtx5090"), load_config("rtx4090")
    assert (r5090.finetune, r5090.lora.r, r5090.rollout.num_generations) == ("qlora", 64, 8)
    assert (r4090.finetune, r4090.lora.r, r4090.rollout.num_generations) == ("qlora", 32, 6)
    assert r5090.model == r4090.model == "Qwen/Qwen2.5-3B" and r5090.task == "gsm8k"
    gemma = load_config("countdown-gemma2")
    assert gemma.model == "google/gemma-2-2b" and gemma.task == "countdown"


def test_overrides_nested_typed_and_dict_keys():
    cfg = load_config("smoke", ["max_steps=7", "rollout.temperature=0.5", "lr=1e-5", "algo.drop_zero_std=true",
                                "task_options.data=x.jsonl", "lora.target_modules=q_proj,v_proj", "seed=3"])
    assert cfg.max_steps == 7 and cfg.rollout.temperature == 0.5 and cfg.lr == 1e-5
    assert cfg.algo.drop_zero_std is True and cfg.task_options["data"] == "x.jsonl"
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.seed == 3


@pytest.mark.parametrize("override, names", [
    ("max_stepz=3", "max_stepz"),
    ("rollout.temprature=1", "rollout.temprature"),
    ("max_steps=three", "max_steps"),
    ("max_steps=2.5", "max_steps"),
    ("algo.scale_rewards=maybe", "algo.scale_rewards"),
    ("algo.loss_agg=mean", "algo.loss_agg"),
    ("rollout.engine=tgi", "rollout.engine"),
    ("rollout.num_generations=1", "rollout.num_generations"),
    ("lr=-1", "lr"),
    ("seed", "seed"),
])
def test_bad_overrides_name_the_key(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config("smoke", [override])


def test_unknown_key_in_yaml_file(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("max_steps: 3\nrollout: {num_generations: 4, bogus: 1}\n")
    with pytest.raises(ConfigError, match=r"rollout\.bogus"):
        load_config(str(p))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cpu-demo"):
        load_config("no-such-preset")


@pytest.mark.parametrize("override, key", [
    ("rollout.temperature=0", "rollout.temperature=0"),
    ("rollout.temperature=0.0", "rollout.temperature=0"),
    ("rollout.top_k=1", "rollout.top_k=1"),
    ("rollout.top_p=0", "rollout.top_p=0"),
    ("rollout.top_p=-0.5", "rollout.top_p=-0.5"),
    ("rollout.top_p=1e-9", "rollout.top_p=1e-09"),  # below 1/V for any vocabulary: one token kept
])
def test_greedy_sampling_is_refused_for_training(override, key):
    """Greedy rollouts make every group's G completions identical: zero advantages, nothing learned."""
    with pytest.raises(ConfigError) as err:
        load_config("smoke", [override])
    message = str(err.value)
    assert key in message and "identical" in message and "\n" not in message


def test_sampling_that_keeps_more_than_one_token_is_accepted():
    for extra in (["rollout.top_k=2"], ["rollout.temperature=0.1"], ["rollout.top_p=0.05"], ["rollout.top_k=0"],
                  ["rollout.top_p=0.0001"]):
        load_config("smoke", extra)


# ---- resume: the checkpoint's config against the current one ----


def _diff(saved_overrides, current_overrides):
    from aha.ckptdir import resume_diff

    return resume_diff(load_config("smoke", saved_overrides).to_dict(), load_config("smoke", current_overrides).to_dict())


@pytest.mark.parametrize("saved, current, item", [
    (["model=random:tiny-qwen2"], ["model=random:tiny-llama"], "model random:tiny-qwen2 -> random:tiny-llama"),
    (["finetune=lora"], ["finetune=full"], "finetune lora -> full"),
    (["lora.r=4"], ["lora.r=8"], "lora.r 4 -> 8"),
    (["lora.alpha=8"], ["lora.alpha=16"], "lora.alpha 8 -> 16"),
    (["lora.target_modules=q_proj,v_proj"], ["lora.target_modules=q_proj"], 'lora.target_modules ["q_proj", "v_proj"] -> ["q_proj"]'),
    (["lora.last_layers=0"], ["lora.last_layers=1"], "lora.last_layers 0 -> 1"),
    (["optimizer=adamw"], ["optimizer=adamw8bit"], "optimizer adamw -> adamw8bit"),
    (["seed=0"], ["seed=1"], "seed 0 -> 1 (the random base weights come from the seed)"),
])
def test_resume_refuses_what_the_saved_state_depends_on(saved, current, item):
    refused, changed = _diff(saved, current)
    assert refused == [item] and changed == []


@pytest.mark.parametrize("saved, current, item", [
    (["finetune=full", "seed=0"], ["finetune=full", "seed=1"], "seed 0 -> 1"),  # full weights are saved
    (["model=smollm2-135m", "seed=0"], ["model=smollm2-135m", "seed=3"], "seed 0 -> 3"),
    (["rollout.num_generations=4"], ["rollout.num_generations=8"], "rollout.num_generations 4 -> 8"),
    (["prompts_per_step=2"], ["prompts_per_step=4"], "prompts_per_step 2 -> 4"),
    (["max_steps=3"], ["max_steps=9"], "max_steps 3 -> 9"),
    (["lr_schedule=constant"], ["lr_schedule=cosine"], "lr_schedule constant -> cosine"),
    # (task= over the preset drops the preset's task_options: compare the task alone)
    (["task=countdown", "task_options={}"], ["task=gsm8k"], "task countdown -> gsm8k"),
    (["task_options.seed=1"], ["task_options.seed=2"],
     'task_options {"n_test": 16, "n_train": 64, "seed": 1, "shaping": true} -> '
     '{"n_test": 16, "n_train": 64, "seed": 2, "shaping": true}'),
    (["rollout.temperature=1.0"], ["rollout.temperature=0.7"], "rollout.temperature 1 -> 0.7"),
    (["lr=0.001"], ["lr=1e-5"], "lr 0.001 -> 1e-05"),
])
def test_resume_reports_behaviour_changes(saved, current, item):
    refused, changed = _diff(saved, current)
    assert refused == [] and changed == [item]


def test_resume_ignores_where_and_how_often_and_unknown_keys():
    from aha.ckptdir import resume_diff

    same = ["output_dir=elsewhere", "device=auto", "save_every=1", "keep_last=9", "eval_every=5", "probe_every=0",
            "micro_batch_tokens=64", "logprob_chunk=8", "rollout.batch_size=2", "rollout.engine=native",
            "gradient_checkpointing=true", "tensorboard=false", "log_completions_every=0"]
    assert _diff([], same) == ([], [])
    saved = load_config("smoke").to_dict()
    del saved["lora"]["last_layers"], saved["seed"]  # a config written before these keys existed
    saved["retired_key"] = 1
    assert resume_diff(saved, load_config("smoke", ["seed=4", "lora.last_layers=1"]).to_dict()) == ([], [])
    refused, changed = _diff(["lora.r=4", "max_steps=3"], ["lora.r=8", "max_steps=6", "finetune=full"])
    assert refused == ["finetune lora -> full", "lora.r 4 -> 8"] and changed == ["max_steps 3 -> 6"]


@pytest.mark.parametrize("preset, overrides, needles", [
    ("cpu-dmeo", [], ["no config 'cpu-dmeo'", "did you mean 'cpu-demo'", "presets: "]),
    ("smoke", ["lrr=1e-3"], ["unknown config key 'lrr'", "did you mean lr?"]),  # a typo
    ("smoke", ["max_stp=3"], ["did you mean max_steps?"]),
    ("smoke", ["rollout.num_generation=3"], ["'rollout.num_generation'", "did you mean num_generations?"]),
    ("smoke", ["zzz=1"], ["unknown config key 'zzz'; known keys here: "]),  # nothing close: no guess
])
def test_misspelt_presets_and_keys_name_the_likely_fix(preset, overrides, needles):
    with pytest.raises(ConfigError) as err:
        load_config(preset, overrides)
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    if preset == "smoke" and "zzz" in overrides[0]:
        assert "did you mean" not in msg


# ---- poisoned values: non-finite floats, absurd sizes, empty paths, duplicated YAML keys ----


def _float_keys(obj, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _float_keys(value, f"{prefix}{f.name}.")
        elif hints[f.name] is float:
            yield prefix + f.name


FLOAT_KEYS = sorted(_float_keys(Config()))


def test_the_float_keys_are_found():
    assert {"lr", "rollout.temperature", "algo.epsilon_low", "lora.dropout", "algo.beta"} <= set(FLOAT_KEYS)
    assert len(FLOAT_KEYS) >= 15


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf"])
def test_non_finite_floats_are_refused_naming_the_key(key, value):
    """`x < 0` is false for NaN: every float key is checked with isfinite, from YAML (.nan) or text (nan)."""
    with pytest.raises(ConfigError) as err:
        load_config("smoke", [f"{key}={value}"])
    msg = str(err.value)
    assert f"'{key}'" in msg and "finite" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("override, needles", [
    ("lora.alpha=0", ["'lora.alpha'", "> 0"]),
    ("lora.alpha=-16", ["'lora.alpha'", "> 0"]),
    ("lora.dropout=-0.1", ["'lora.dropout'", "[0, 1)"]),
    ("lora.dropout=1", ["'lora.dropout'", "[0, 1)"]),
    ("adam_beta1=1.5", ["'adam_beta1'", "[0, 1)"]),
    ("adam_beta2=1", ["'adam_beta2'", "[0, 1)"]),
    ("seed=-1", ["'seed'", "0..4294967295"]),
    ("seed=4294967296", ["'seed'", "0..4294967295"]),
    ("seed=99999999999999999999999", ["'seed'"]),
    ("output_dir=", ["'output_dir'", "empty", "output_dir=runs/NAME"]),
    ("output_dir=' '", ["'output_dir'", "empty"]),
    ("model=", ["'model'", "empty"]),
    ("rollout.max_new_tokens=300000000", ["'rollout.max_new_tokens'", "300,000,000", "lower it"]),
    ("prompts_per_step=100000000", ["prompts_per_step", "sequences per step"]),
    ("rollout.num_generations=1000000", ["rollout.num_generations", "sequences per step"]),
    ("lora.r=1000000", ["'lora.r'", "finetune=full"]),
])
def test_absurd_values_are_refused_with_one_line(override, needles):
    with pytest.raises(ConfigError) as err:
        load_config("smoke", [override])
    msg = str(err.value)
    assert all(n in msg for n in needles) and "\n" not in msg, msg


def test_large_but_workable_values_still_load():
    load_config("smoke", ["seed=4294967295", "lora.r=4096", "rollout.max_new_tokens=32768", "prompts_per_step=64",
                          "rollout.num_generations=64", "lora.dropout=0.5", "lora.alpha=1", "adam_beta2=0.999"])
    load_config("smoke", ["prompts_per_step=1024", "rollout.num_generations=64", "rollout.max_new_tokens=4096"])
    with pytest.raises(ConfigError, match="completion tokens per step"):
        load_config("smoke", ["prompts_per_step=1024", "rollout.num_generations=64", "rollout.max_new_tokens=8192"])


@pytest.mark.parametrize("text, key, where", [
    ("max_steps: 3\nlr: 1.0e-5\nmax_steps: 30\n", "'max_steps'", "lines 1 and 3"),
    ("rollout:\n  temperature: 0.7\n  max_new_tokens: 8\n  temperature: 1.0\n", "'temperature'", "lines 2 and 4"),
    ("rollout: {temperature: 0.7, temperature: 1.0}\n", "'temperature'", "line 1"),
])
def test_duplicated_yaml_keys_are_refused_naming_key_and_lines(tmp_path: Path, text, key, where):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(p))
    msg = str(err.value)
    assert str(p) in msg and key in msg and where in msg and "twice" in msg and "\n" not in msg, msg


def test_yaml_merge_keys_and_repeated_keys_in_separate_mappings_are_fine(tmp_path: Path):
    p = tmp_path / "ok.yaml"
    p.write_text("lora: {r: 4}\nrollout: {num_generations: 4}\nalgo: {beta: 0.0}\n")
    assert load_config(str(p)).lora.r == 4


def test_poisoned_config_on_the_command_line_writes_nothing(tmp_path: Path):
    """Exit 2, one line, and the directory untouched: an empty output_dir used to train into the current
    directory (overwriting its config.yaml); a bad seed used to fail only after the run dir was written."""
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "config.yaml").write_text("mine: 1\n")
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    for bad in ("output_dir=", "seed=-5", "rollout.temperature=nan", "algo.epsilon_low=.nan"):
        args = ["train", "-c", "smoke", bad] if bad == "output_dir=" else ["train", "-c", "smoke", "output_dir=run", bad]
        r = subprocess.run([sys.executable, "-m", "aha", *args], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert bad.split("=")[0] in r.stderr
        assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before
