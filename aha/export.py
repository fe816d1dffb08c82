"""`aha export RUN_OR_CHECKPOINT --out DIR`: what a run trained, as a directory that plain
transformers (and the serving tools that read its format) load with no aha installed.

    aha export runs/cpu-demo --out runs/smollm2-arith      # a run dir: its latest checkpoint
    aha export runs/x/checkpoints/step-200 --out model     # LoRA merged into the base weights
    aha export runs/x --out adapter --adapter-only         # a clean PEFT adapter instead

The merged export holds the model (the LoRA update W + (alpha/r) B A folded into each adapted
weight, computed in float32 and stored in the base model's own dtype), the tokenizer, a neutral
`generation_config.json` (only the bos/eos/pad ids: no sampling settings, so `generate` is greedy
unless the caller asks otherwise; the end-of-turn ids are those aha stops at), and a model card
(README.md: base model, task, training steps, held-out accuracy if the run measured it).
Greedy decoding of the export gives the text `aha play --checkpoint` gives (tested).

A QLoRA adapter was trained against the 4-bit (NF4) base. With CUDA and bitsandbytes the export
loads the base in 4 bits exactly as training did, de-quantises it and merges into that; without
them it merges into the full-precision base weights (close to, not identical with, the trained
policy). The log line and the card say which.

The export is written to a temporary directory beside DIR and renamed into place: a failed export
leaves nothing behind, and an existing non-empty DIR is only replaced with --overwrite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aha.ckptdir import ADAPTER_CONFIG, ADAPTER_FILE, META_FILE
from aha.errors import CheckpointError, ConfigError
from aha.fsio import replace_dir
from aha.model_card import model_card

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Source:
    """What an export reads: the weights' directory and what the run recorded about them."""

    path: Path  # the checkpoint or adapter directory
    kind: str  # "checkpoint" | "adapter"
    finetune: str  # lora | qlora | full
    base: str  # the base model as the run named it (hub id, local dir, smollm2-135m, random:<arch>)
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.yaml, {} for a bare adapter
    step: int | None = None  # the checkpoint's training step
    run_dir: Path | None = None  # the run directory holding metrics.jsonl, when known


def export(source: str | Path, out: str | Path, adapter_only: bool = False, dtype: str = "auto",
           model: str | None = None, overwrite: bool = False) -> Path:
    """Write `source` (run, checkpoint or adapter dir) to `out` as a model directory or a PEFT adapter.

    Args:
        source: a run directory (its latest complete checkpoint), a checkpoint directory, or a
            directory with `adapter_config.json`.
        out: the directory to write; it must not exist or be empty unless `overwrite`.
        adapter_only: write the LoRA adapter (PEFT format) instead of a merged model.
        dtype: "auto" (the base model's dtype; for full fine-tuning the checkpoint's) or a dtype name.
        model: a base model to load instead of the recorded one.
        overwrite: replace a non-empty `out`.

    Returns:
        The written directory.

    Raises:
        CheckpointError: the source is missing, partial, or has no adapter for --adapter-only.
        ConfigError: `out` already holds files (without `overwrite`), or a bad dtype.
        ModelError: the base model cannot be loaded here.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    src = read_source(Path(source).expanduser())
    out = Path(out).expanduser()
    if out.resolve() == src.path.resolve() or src.path.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} is inside the checkpoint it exports; pick a directory elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out} already exists and is not empty; pick another --out or pass --overwrite")
    if adapter_only and src.finetune == "full":
        raise CheckpointError(f"{src.path} holds full fine-tuned weights (finetune=full), not an adapter; "
                              "drop --adapter-only to export the model")
    made_parent = not out.parent.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    done = False
    try:
        if adapter_only:
            notes = write_adapter(src, tmp, model)
        else:
            notes = write_merged(src, tmp, dtype, model)
        base = src.base or "unknown"
        card = model_card(out.name, base=base, base_for_peft=loadable_base(base),
                          finetune=src.finetune, config=src.config, step=src.step, run_dir=src.run_dir,
                          adapter_only=adapter_only, notes=notes, location=str(out))
        (tmp / "README.md").write_text(card)
        _readable(tmp)
        replace_dir(tmp, out)  # with --overwrite, the old export goes only once the new one is in place
        done = True
    finally:  # a failed export leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not done and made_parent:
            shutil.rmtree(out.parent, ignore_errors=True)
    what = "PEFT adapter" if adapter_only else notes["how"]
    print(f"aha: exported {src.path} ({what}) to {out}", file=sys.stderr)
    if notes.get("qlora"):
        print(f"aha: note: {notes['qlora']}", file=sys.stderr)
    return out


def read_source(path: Path) -> Source:
    """The checkpoint or adapter behind `path` and the run's record of it; see `export`."""
    from aha.trained import read_run_config, resolve_adapter, resolve_checkpoint

    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run dir, a checkpoint dir "
                              "(runs/NAME/checkpoints/step-N) or a LoRA adapter dir")
    if (path / ADAPTER_CONFIG).is_file() and not (path / META_FILE).is_file():
        path = resolve_adapter(path)  # a bare adapter (not an aha checkpoint)
        cfg = read_run_config(path)
        recorded = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
        return Source(path, "adapter", str(cfg.get("finetune", "lora")), str(cfg.get("model") or recorded), cfg)
    path = resolve_checkpoint(path)
    cfg = read_run_config(path)
    meta = json.loads((path / META_FILE).read_text())
    finetune = str(cfg.get("finetune", "lora")) if (path / ADAPTER_FILE).is_file() else "full"
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    return Source(path, "checkpoint", finetune, str(cfg.get("model") or ""), cfg, meta.get("step"), run_dir)


def write_merged(src: Source, out: Path, dtype: str, model: str | None) -> dict[str, str]:
    """Merge the adapter into its base (or take the full weights) and save a transformers model dir."""
    import torch

    from aha.trained import load_trained
    from aha.model import resolve_dtype

    notes: dict[str, str] = {}
    kwargs = {"checkpoint": src.path} if src.kind == "checkpoint" else {"adapter": src.path}
    if src.finetune == "full":
        target = resolve_dtype(dtype, torch.device("cpu")) if dtype != "auto" else saved_dtype(src.path)
        policy = load_trained(**kwargs, model=model, device="cpu", dtype=_dtype_name(target))
        net, tokenizer = policy.model, policy.tokenizer
        notes["how"] = f"full fine-tune, {_dtype_name(target)}"
    else:
        target = resolve_dtype(dtype, torch.device("cpu")) if dtype != "auto" else base_dtype(model or src.base)
        if src.finetune == "qlora" and _can_dequantize():
            net, tokenizer = _dequantized_qlora(src, model)
            notes["qlora"] = ("QLoRA: the adapter was merged into the de-quantised 4-bit (NF4) base, the weights "
                              "it was trained against")
        else:
            # The merge runs in float32 (one rounding, at the end, to the target dtype).
            policy = load_trained(**kwargs, model=model, device="cpu", dtype="float32")
            net, tokenizer = policy.model, policy.tokenizer
            if src.finetune == "qlora":
                notes["qlora"] = ("QLoRA: the adapter was trained against the 4-bit (NF4) base; without CUDA and "
                                  "bitsandbytes here it was merged into the full-precision base weights, so outputs "
                                  "are close to, not identical with, the trained policy (export on a CUDA machine "
                                  "with bitsandbytes to merge into the de-quantised base)")
        net = net.merge_and_unload()
        notes["how"] = f"LoRA merged into {model or src.base}, {_dtype_name(target)}"
    net = net.to(target)
    net.generation_config = export_generation_config(tokenizer, net)
    net.save_pretrained(out)
    tokenizer.save_pretrained(out)
    notes["dtype"] = _dtype_name(target)
    return notes


def write_adapter(src: Source, out: Path, model: str | None) -> dict[str, str]:
    """Copy the adapter weights and write an adapter_config.json that names a loadable base."""
    config = json.loads((src.path / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = loadable_base(model or src.base) or config.get("base_model_name_or_path")
    config["inference_mode"] = True
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(src.path / ADAPTER_FILE, out / ADAPTER_FILE)
    if (src.path / "tokenizer_config.json").is_file():  # aha checkpoints save the tokenizer beside the adapter
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(src.path).save_pretrained(out)
    notes = {"how": "PEFT adapter"}
    if src.finetune == "qlora":
        notes["qlora"] = ("QLoRA: this adapter was trained against the base loaded in 4 bits (NF4, double "
                          "quantisation); load the base that way for the trained policy exactly")
    return notes


def export_generation_config(tokenizer: Any, model: Any) -> Any:
    """A GenerationConfig with only bos/eos/pad ids: greedy by default, no sampling settings. The
    eos ids are every id aha stops at (tokenizer EOS and the model's own end-of-turn ids)."""
    from transformers import GenerationConfig

    from aha.rollout import eos_token_ids

    eos = eos_token_ids(tokenizer, model)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(model.config, "bos_token_id", None)
    return GenerationConfig(bos_token_id=bos, eos_token_id=eos[0] if len(eos) == 1 else eos,
                            pad_token_id=tokenizer.pad_token_id)


def base_dtype(name: str) -> Any:
    """The dtype a base model's weights come in: its config's dtype (hub id or local dir); float32
    for the bundled SmolLM2 and GGUF files (de-quantised to float32) and random:<arch> (built here)."""
    import torch

    if name.startswith("random:") or name == "smollm2-135m" or name.endswith(".gguf"):
        return torch.float32
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except OSError:
        return torch.float32  # the base loaded (or failed) already; this only picks the output dtype
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, value) if isinstance(value, str) else value


def saved_dtype(path: Path) -> Any:
    """The dtype recorded in a saved model's config.json (float32 if none)."""
    import torch

    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    value = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, value)


def loadable_base(name: str) -> str | None:
    """How PEFT should name the base: a hub id as is, a local path made absolute, the bundled
    SmolLM2 as its converted copy in aha's cache; None for random:<arch> (aha-only)."""
    if not name or name.startswith("random:"):
        return None
    if name == "smollm2-135m":
        from aha.model import cache_dir

        return str((cache_dir() / "smollm2-135m").resolve())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _can_dequantize() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def _dequantized_qlora(src: Source, model: str | None) -> tuple[Any, Any]:
    """The base loaded in 4 bits as in training, de-quantised, with the adapter on top (on the CPU)."""
    import torch
    from peft import PeftModel

    from aha.model import ensure_pad_token, load_base

    base, tokenizer = load_base(model or src.base, torch.bfloat16, quantize_4bit=True,
                                seed=int(src.config.get("seed", 0)))
    base = base.dequantize(dtype=torch.float32).to("cpu")  # NF4 -> float32 values; drops quantization_config
    ensure_pad_token(tokenizer)
    return PeftModel.from_pretrained(base, str(src.path)), tokenizer


def _readable(directory: Path) -> None:
    """Give the files the permissions the user's umask allows (safetensors writes them 0600): an
    export is meant to be copied and served, often by another user."""
    mask = os.umask(0)
    os.umask(mask)
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~mask)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")
