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
