"""The JAX backend (`backend: jax`): the same GRPO as the torch path, for TPUs (Kaggle v3-8, Colab v2-8).

Everything that is not tensor code is shared with the torch path: config, tasks and rewards, prompt
rendering and decoding (`aha.rollout`), the data order (aha/data.py), the lr schedule
(aha/schedule.py), the step records and metrics (aha/records.py), the run's logs (aha/log.py),
checkpoint directories (aha/ckptdir.py), `aha report`, `aha eval` / `aha play` (a JAX checkpoint is
a peft adapter the torch path loads). What is JAX here, one small file each:

- model.py     Gemma2 / Qwen2 / Llama decoder as pure functions over a dict of stacked weights
- weights.py   HF safetensors (hub id or directory) and `random:<arch>` -> that dict
- lora.py      LoRA on the attention/MLP projections; merge for the sampler; peft-format export
- sampler.py   jitted decode loop: pre-allocated KV cache, temperature / top-p / top-k
- logprobs.py  per-token log-probs without [B, T, vocab] logits (chunked, rematerialised)
- algo.py      `aha.algo` on jnp: its loss and KL run as they are, advantages and loss weights ported
- sharding.py  one mesh over `jax.devices()`: batch and weights sharded FSDP-style
- checkpoint.py atomic save / exact resume
- train.py     the loop

Importing this package does not import jax; each module does.
"""
