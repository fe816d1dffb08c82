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
])
def test_greedy_sampling_is_refused_for_training(override, key):
    """Greedy rollouts make every group's G completions identical: zero advantages, nothing learned."""
    with pytest.raises(ConfigError) as err:
        load_config("smoke", [override])
    message = str(err.value)
    assert key in message and "identical" in message and "\n" not in message


def test_sampling_that_keeps_more_than_one_token_is_accepted():
    for extra in (["rollout.top_k=2"], ["rollout.temperature=0.1"], ["rollout.top_p=0.05"], ["rollout.top_k=0"]):
        load_config("smoke", extra)
