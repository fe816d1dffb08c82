"""Load what was trained, for use: a checkpoint, a LoRA adapter, or a plain model.

`load_trained` is what `aha eval` and `aha play` call. It reuses `aha.model` (load_base,
resolve_device, resolve_dtype, ensure_pad_token) and only adds the part that training does not
need: reading a checkpoint's `config.yaml` to find its base model, and putting saved weights back
on it. Checkpoints of either backend load (a JAX run saves its adapters in peft's format).

- checkpoint dir (`runs/x/checkpoints/step-N`, or a run dir: its latest checkpoint): the base
  model, finetune mode and seed come from its `config.yaml` (the seed matters for `random:<arch>`
  bases, whose weights it draws). LoRA/QLoRA -> the adapter on that base; full -> the saved model.
- adapter dir (anything with `adapter_config.json`): the base is `model=` if given, else the
  model of a `config.yaml` beside the adapter (an aha checkpoint), else the adapter's
  `base_model_name_or_path`.
- model name: anything `aha.model.load_base` accepts.

An adapter whose weights do not fit the base is a CheckpointError naming the base it was trained
on; one that fits a base of another *name* loads, with a warning on stderr (a hub id and a local
copy of the same model have different names).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from aha.ckptdir import (ADAPTER_CONFIG, ADAPTER_FILE, META_FILE, MODEL_FILE, adapter_config_problem, damaged,
                         earlier_hint, list_checkpoints, read_meta, weights_problem)
from aha.errors import CheckpointError, ModelError
from aha.model import Policy, ensure_pad_token, load_base, resolve_device, resolve_dtype



def read_run_config(path: Path) -> dict[str, Any]:
    """The resolved config saved beside a checkpoint or adapter (`config.yaml`), or {} if none."""
    import yaml

    file = Path(path) / "config.yaml"
    if not file.is_file():
        return {}
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise CheckpointError(f"{file} is not valid YAML ({' '.join(str(e).split())[:120]}); the checkpoint "
                              f"is damaged: {earlier_hint(Path(path), '--checkpoint')}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a mapping of config keys; the checkpoint is damaged: "
                              f"{earlier_hint(Path(path), '--checkpoint')}")
    return data


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory; a run directory stands for its latest checkpoint."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a checkpoint directory such as "
                              "runs/NAME/checkpoints/step-N (or a run directory for its latest checkpoint)")
    if not _has_weights(path) and (path / "checkpoints").is_dir():
        complete = [p for p in list_checkpoints(path) if (p / META_FILE).is_file()]
        if not complete:
            raise CheckpointError(f"run {path} has no complete checkpoint yet; train longer or lower save_every")
        path = complete[-1]
    if not _has_weights(path):
        if (path / META_FILE).is_file() or (path / "config.yaml").is_file():  # a checkpoint that lost its weights
            raise CheckpointError(f"checkpoint {path} holds no weights ({ADAPTER_FILE} or {MODEL_FILE}): it is "
                                  f"damaged; {earlier_hint(path, '--checkpoint')}")
        raise CheckpointError(f"{path} holds no weights ({ADAPTER_FILE} or {MODEL_FILE}); it is not a "
                              "checkpoint - pass a runs/NAME/checkpoints/step-N directory")
    read_meta(path, flag="--checkpoint")  # missing, not JSON, wrong fields: the file and an earlier checkpoint
    for name in (ADAPTER_FILE, MODEL_FILE):
        problem = weights_problem(path / name) if (path / name).is_file() else None
        if problem:
            raise damaged(path / name, problem, path, "--checkpoint")
    problem = adapter_config_problem(path) if (path / ADAPTER_FILE).is_file() else None
    if problem:
        raise CheckpointError(f"{path / ADAPTER_CONFIG} {'is ' if problem == 'missing' else ''}{problem}: the "
                              f"checkpoint is damaged; {earlier_hint(path, '--checkpoint')}")
    if not (path / "config.yaml").is_file():
        raise CheckpointError(f"checkpoint {path} has no config.yaml, so its base model is unknown; "
                              f"load it with --adapter {path} --model BASE instead")
    return path


def resolve_adapter(path: str | Path) -> Path:
    """A LoRA adapter directory (one with adapter_config.json)."""
    path = Path(path).expanduser()
    problem = adapter_config_problem(path)
    if problem == "missing":
        raise CheckpointError(f"{path} is not a LoRA adapter directory (no {ADAPTER_CONFIG}); "
                              "for a checkpoint use --checkpoint, for a full model --model")
    if problem:
        raise CheckpointError(f"{path / ADAPTER_CONFIG} {problem}; the adapter is damaged")
    if not (path / ADAPTER_FILE).is_file():
        raise CheckpointError(f"adapter {path} has no {ADAPTER_FILE}; the adapter is incomplete")
    return path


def _has_weights(path: Path) -> bool:
    return (path / ADAPTER_FILE).is_file() or (path / MODEL_FILE).is_file()


def load_trained(checkpoint: str | Path | None = None, adapter: str | Path | None = None,
                 model: str | None = None, device: str = "auto", dtype: str = "auto") -> Policy:
    """A ready-to-generate policy from a checkpoint, an adapter, or a model name.

    Args:
        checkpoint: a checkpoint directory (`runs/NAME/checkpoints/step-N`), or a run directory
            standing for its latest complete checkpoint; its config.yaml names the base model.
        adapter: a LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
        model: alone, the model to load (anything `aha.model.load_base` takes); with `checkpoint`
            or `adapter`, it replaces the recorded base model.
        device: "auto" (CUDA if visible, else CPU), "cpu", "cuda" or "cuda:N".
        dtype: "auto", "float32", "bfloat16" or "float16".

    Returns:
        `aha.model.Policy`: the model in eval mode with gradients off, on `device`; its tokenizer
        (with a pad token); the resolved device and dtype; `finetune` ("lora", "qlora" or "full").

    Raises:
        ModelError: nothing to load, both a checkpoint and an adapter, or an adapter naming no base.
        CheckpointError: a missing, incomplete or damaged checkpoint, or an adapter that does not
            fit the base model (the message names the base it was trained on).
    """
    if checkpoint is not None and adapter is not None:
        raise ModelError("give either a checkpoint or an adapter, not both")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source = None
    if checkpoint is not None:
        source, path = pin_checkpoint(checkpoint)  # read from a private copy: a trainer may rotate it away
        try:
            net, tok, finetune = _from_checkpoint(path, model, dt, dev)
        except CheckpointError as e:  # name the checkpoint, not its private copy
            raise CheckpointError(str(e).replace(str(path), str(source))) from e
        finally:  # everything is in memory now (or failed): the links go
            shutil.rmtree(path, ignore_errors=True)
    elif adapter is not None:
        path = resolve_adapter(adapter)
        cfg = read_run_config(path)
        recorded = cfg.get("model") or json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        base_name = model or recorded
        if not base_name:
            raise ModelError(f"adapter {path} does not name its base model; pass it with --model NAME")
        finetune = "lora"
        net, tok = _with_adapter(path, base_name, recorded, dt, dev, int(cfg.get("seed", 0)), False)
    elif model is not None:
        finetune = "full"
        net, tok = load_base(model, dt)
    else:
        raise ModelError("nothing to load: pass --checkpoint DIR, --adapter DIR or --model NAME")
    ensure_pad_token(tok)
    if not getattr(net, "is_loaded_in_4bit", False):
        net.to(dev)
    net.eval().requires_grad_(False)
    policy = Policy(model=net, tokenizer=tok, device=dev, dtype=dt, finetune=finetune)
    policy.checkpoint = source  # the checkpoint directory read (a run dir resolves to one), or None
    return policy


def _from_checkpoint(path: Path, model: str | None, dt: torch.dtype, dev: torch.device) -> tuple[Any, Any, str]:
    """(net, tokenizer, finetune) from the checkpoint files in `path`."""
    cfg = read_run_config(path)
    base_name = model or str(cfg.get("model") or "")
    seed = cfg.get("seed", 0)
    if type(seed) is not int:
        raise CheckpointError(f"{path / 'config.yaml'} has no integer seed ({seed!r}); the checkpoint is damaged")
    if (path / ADAPTER_FILE).is_file():
        finetune = str(cfg.get("finetune", "lora"))
        net, tok = _with_adapter(path, base_name, cfg.get("model"), dt, dev, seed, finetune == "qlora")
        return net, tok, finetune
    # full fine-tuning: the checkpoint is itself a transformers model directory
    if model:
        print(f"aha: warning: {path} holds full weights; --model {model} is ignored", file=sys.stderr)
    net, tok = load_base(str(path), dt)
    return net, tok, "full"


PIN_TRIES = 5
from aha.fsio import PIN_PREFIX  # noqa: E402 - checkpoints/.aha-pin-PID-step-N-*: a reader's private links


def pin_checkpoint(source: str | Path) -> tuple[Path, Path]:
    """(checkpoint, pinned): the checkpoint `source` resolves to (`resolve_checkpoint`), and a private
    copy of its files to read instead - hard links beside it (no space, no time; a link keeps a file
    alive after a trainer's keep_last rotation deletes the checkpoint), else copies in the temp dir.
    The caller removes the copy once loaded (a killed reader's is removed by fsio.clean_stale). When `source` is a run directory and its latest
    checkpoint vanishes while being linked, the next latest is taken (up to PIN_TRIES times); a
    named checkpoint that vanishes is a CheckpointError saying so and what to pass instead."""
    for _ in range(PIN_TRIES):
        path = resolve_checkpoint(source)
        pinned = _pin_dir(path)
        try:
            names = [f.name for f in path.iterdir() if f.is_file()]
            for name in names:
                _link_or_copy(path / name, pinned / name)
            resolve_checkpoint(pinned)  # whole: meta.json, weights, adapter config, config.yaml
            return path, pinned
        except (FileNotFoundError, CheckpointError):
            shutil.rmtree(pinned, ignore_errors=True)
            if path.is_dir():  # still there: damaged, not rotated - say so about the checkpoint itself
                resolve_checkpoint(path)
                raise
            if path == Path(source).expanduser():
                raise CheckpointError(f"checkpoint {path} was removed while being read (a running trainer keeps only "
                                      f"its keep_last newest); pass the run directory {path.parent.parent} to read its "
                                      "latest checkpoint") from None
    raise CheckpointError(f"the latest checkpoint of {source} was rotated away {PIN_TRIES} times while being read; "
                          "try again, or pass a checkpoint directory the trainer keeps")


def _pin_dir(path: Path) -> Path:
    """An empty private directory beside `path` (same file system: hard links work), else in the temp dir."""
    try:
        pinned = Path(tempfile.mkdtemp(prefix=f"{PIN_PREFIX}{os.getpid()}-{path.name}-", dir=path.parent))
    except OSError:  # a read-only run directory: copies in the temp dir instead
        pinned = Path(tempfile.mkdtemp(prefix=f"aha-pin-{path.name}-"))
    return pinned


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except FileNotFoundError:
        raise
    except OSError:  # another file system, or links not allowed there
        shutil.copy2(src, dest)


def _with_adapter(path: Path, base_name: str, recorded: str | None, dtype: torch.dtype, device: torch.device,
                  seed: int, qlora: bool) -> tuple[torch.nn.Module, Any]:
    """Base model + the LoRA adapter saved in `path`; a mismatch is a CheckpointError."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not base_name:
        raise CheckpointError(f"{path}: its config.yaml names no model; pass the base with --model NAME")
    if recorded and base_name != recorded:
        print(f"aha: warning: adapter {path} was trained on {recorded!r}; loading it onto {base_name!r} as asked",
              file=sys.stderr)
    # QLoRA adapters were trained on a 4-bit base; without CUDA and bitsandbytes we use the
    # full-precision base (close, not identical).
    quantize = qlora and device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    base, tokenizer = load_base(base_name, dtype, quantize_4bit=quantize, seed=seed)
    peft_cfg = PeftConfig.from_pretrained(str(path))
    peft_cfg.inference_mode = True
    fix = f"it was trained on {recorded!r}: pass --model {recorded}" if recorded else "pass its base with --model NAME"
    try:
        weights = load_file(path / ADAPTER_FILE)
    except (SafetensorError, OSError) as e:  # truncated or not a safetensors file
        raise CheckpointError(f"{path / ADAPTER_FILE} is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                              f"the adapter is damaged: {earlier_hint(path, '--checkpoint')}") from e
    try:
        net = get_peft_model(base, peft_cfg)
        result = set_peft_model_state_dict(net, weights)
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, missing target modules
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"adapter {path} does not fit base model {base_name!r} ({first}); {fix}") from e
    # Keys that name no module here, or adapted modules the file does not fill: another model.
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        example = (unexpected or missing)[0]
        raise CheckpointError(f"adapter {path} does not fit base model {base_name!r} ({len(unexpected)} "
                              f"unexpected, {len(missing)} missing LoRA weights, e.g. {example}); {fix}")
    return net, tokenizer
