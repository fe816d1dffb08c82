"""Sharding on 8 fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), laid out as on a
TPU v3-8's 8 cores: the batch split by rows, frozen weights split FSDP-style, adapters and optimizer
state replicated; a sharded GRPO update and greedy rollout compute what the 1-device ones do.

The flag must be set before jax is imported, so the checks run in a subprocess."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from aha.config import load_config
    from aha.jax import lora as lora_lib
    from aha.jax.model import ModelConfig
    from aha.jax.sampler import JaxRollout, generate
    from aha.jax.sharding import make_mesh, put_batch, replicate, shard_params, weight_spec
    from aha.jax.train import build_optimizer, policy_update, step_functions
    from aha.jax.weights import load_model
    from aha.model import ARCHS

    assert len(jax.devices()) == 8, jax.devices()
    cfg = load_config("smoke", ["backend=jax", "prompts_per_step=4", "micro_batch_tokens=512",
                                "algo.mu=2", "algo.beta=0.04", "lora.r=8", "lora.target_modules=[all-linear]"])
    lm = load_model("random:tiny-gemma2", "float32", seed=0)
    mcfg = lm.config
    N, P_, C = 16, 32, 32
    rng = np.random.default_rng(0)
    cmask = (np.arange(C)[None] < rng.integers(4, C + 1, (N, 1))).astype(np.int64)
    pmask = (np.arange(P_)[None] >= rng.integers(0, 20, (N, 1))).astype(np.int64)
    ro = JaxRollout(rng.integers(0, 256, (N, P_)) * pmask, pmask, rng.integers(0, 256, (N, C)) * cmask, cmask,
                    [""] * N, np.zeros(N, bool))
    adv = rng.normal(size=N).astype(np.float32)

    def run(devices):
        mesh = make_mesh(devices)
        params = shard_params(lm.params, mesh)
        targets = lora_lib.target_names(cfg.lora.target_modules)
        lora = lora_lib.init(jax.random.key(0), mcfg, cfg.lora.r, targets)
        lora = jax.tree.map(lambda x: x + 0.01, lora)  # B != 0, so every adapter gets a gradient
        opt = build_optimizer(cfg)
        lora, opt_state = replicate(lora, mesh), replicate(opt.init(lora), mesh)
        fns = step_functions(mcfg, cfg, cfg.lora.alpha / cfg.lora.r, opt, mesh)
        put = lambda x: put_batch(x, mesh)
        new_lora, opt_state, stats = policy_update(fns, params, lora, opt_state, ro, adv, np.ones(N, bool), cfg,
                                                   [1e-3, 1e-3], len(devices), put)
        merged = fns["merge"](params, new_lora)
        texts = generate(merged, mcfg, lm.tokenizer, ["a b c", "xyz"] * 4, jax.random.key(0), 10, 0.0, put=put)
        return mesh, params, new_lora, opt_state, stats, texts, put

    mesh, params, lora8, opt8, stats8, ro8, put = run(jax.devices())
    _, _, lora1, _, stats1, ro1, _ = run(jax.devices()[:1])

    # Placement, as on a v3-8: 8 shards of every weight matrix, the batch by rows, adapters whole.
    q = params["layers"]["q_proj"]  # (L, H, NH * D)
    assert q.sharding.spec == P(None, None, "fsdp"), q.sharding.spec
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 64, 8)
    assert params["layers"]["down_proj"].sharding.spec == P(None, None, "fsdp")
    assert params["embed"].sharding.spec == P(None, "fsdp")  # vocab 259: by column (256000 rows: by row)
    assert params["layers"]["input_layernorm"].sharding.spec == P()
    batch = put(ro.prompt_ids)
    assert batch.sharding.spec == P("fsdp", None) and batch.addressable_shards[0].data.shape == (2, P_)
    for leaf in jax.tree.leaves(lora8) + jax.tree.leaves(opt8):
        assert leaf.sharding.is_fully_replicated
    assert len(lora8["q_proj"]["a"].devices()) == 8

    # Same numbers as one device.
    for k in ("loss", "kl", "clip_frac", "grad_norm", "entropy"):
        assert np.isclose(getattr(stats8, k), getattr(stats1, k), rtol=2e-4, atol=1e-6), (k, stats8, stats1)
    assert stats8.grad_norm > 0
    for a, b in zip(jax.tree.leaves(lora8), jax.tree.leaves(lora1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    assert (ro8.completion_ids == ro1.completion_ids).all()

    # The real Gemma2-2B on a v3-8 / v2-8: every matrix split 8 ways, ~0.65 GB of bf16 weights per core.
    g = ModelConfig.from_hf(dict(ARCHS["gemma2-2b"], num_hidden_layers=26))
    d = lora_lib.dims(g)
    shapes = {"embed": (g.vocab_size, g.hidden_size), "layers": {n: (g.num_layers, *d[n]) for n in d}}
    per_core = total = 0
    for path, shape in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]:
        spec = weight_spec(path, jax.ShapeDtypeStruct(shape, jnp.bfloat16), 8)
        assert "fsdp" in spec, (path, spec)
        total += 2 * np.prod(shape)
        per_core += 2 * np.prod(shape) / 8
    assert 5.0e9 < total < 5.3e9 and per_core < 0.67e9, (total, per_core)
    assert weight_spec((jax.tree_util.DictKey("embed"),), jax.ShapeDtypeStruct((256000, 2304), jnp.bfloat16),
                       8) == P("fsdp", None)
    print("OK", stats8.loss, stats1.loss)
''')


@pytest.mark.slow
def test_eight_fake_devices_shard_like_a_v3_8(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    script = tmp_path / "sharded.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert out.stdout.startswith("OK")
