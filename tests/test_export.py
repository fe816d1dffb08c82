"""`aha export`: a run -> a plain transformers model dir (LoRA merged) or a clean PEFT adapter.

The round trip that matters runs on SmolLM2-135M after a few training steps: the exported model,
loaded by plain transformers, writes the same greedy text as `aha play --checkpoint`."""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest
import torch

from aha.cli import main

QUESTIONS = ["Tom has 3 pens and buys 4 more. How many pens does he have?", "What is 12 minus 5?"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A 3-step smoke run (random:tiny-qwen2, countdown) with held-out evals at steps 0 and 3."""
    run = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "-c", "smoke", f"output_dir={run}", "report_to=none", "eval_every=3", "probe_every=0"]) == 0
    return run


def play(argv: list[str], questions: list[str], monkeypatch, capsys) -> list[str]:
    """`aha play ... --jsonl` on piped questions: the completions (without any pre-fill)."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(q + "\n" for q in questions)))
    assert main(["play", *argv, "--jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return [r["completion"] for r in rows]


def greedy(model, tokenizer, text: str, n: int, special: bool = True) -> str:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=special)
    out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_export_round_trip_matches_aha_play(tmp_path, monkeypatch, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aha.model import load_base
    from aha.tasks import get_task

    run = tmp_path / "run"
    assert main(["train", "-c", "cpu-demo", f"output_dir={run}", "max_steps=2", "prompts_per_step=1",
                 "rollout.num_generations=4", "rollout.max_new_tokens=16", "probe_every=0", "save_every=2", "eval_every=0",
                 "report_to=none"]) == 0
    out = tmp_path / "smollm2-arith"
    assert main(["export", str(run), "--out", str(out)]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json"} <= files
    assert not files & {"adapter_config.json", "adapter_model.safetensors", "trainer_state.pt", "meta.json",
                        "config.yaml"}
    gen = json.loads((out / "generation_config.json").read_text())
    assert set(gen) <= {"bos_token_id", "eos_token_id", "pad_token_id", "transformers_version"}  # no sampling
    card = (out / "README.md").read_text()
    assert "`smollm2-135m`" in card and "`arith`" in card and "2 GRPO steps" in card and "float32" in card

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32 and not any("lora" in k for k in model.state_dict())
    # The merge changed the adapted weights (last 10 layers), and only those.
    base, _ = load_base("smollm2-135m", torch.float32)
    delta = {k: (v - base.state_dict()[k]).abs().max().item() for k, v in model.state_dict().items()}
    assert delta["model.layers.29.self_attn.q_proj.weight"] > 0 and delta["model.layers.0.self_attn.q_proj.weight"] == 0

    # 1. Raw text, no template: the same ids on both sides.
    n = 24
    raw = play(["--checkpoint", str(run), "--raw", "--max-new-tokens", str(n)], QUESTIONS, monkeypatch, capsys)
    assert raw == [greedy(model, tok, q, n) for q in QUESTIONS]
    # 2. A chat prompt (system + question + pre-filled "<think>\n"), rendered by plain transformers.
    task = get_task("gsm8k", template="chat")
    chat = play(["--checkpoint", str(run), "--task", "gsm8k", "--task-option", "template=chat", "--max-new-tokens",
                 str(n)], QUESTIONS, monkeypatch, capsys)
    texts = [tok.apply_chat_template(task.prompt(q), tokenize=False, continue_final_message=True) for q in QUESTIONS]
    assert chat == ["<think>\n" + greedy(model, tok, t, n, special=False) for t in texts]  # play shows the pre-fill

    # 2b. The card's own code, on the card's own sample prompt (chat messages ending in the pre-fill).
    code = card.split("```python\n")[1].split("```")[0]
    messages = json.loads(card.split("```text\n")[1].split("```")[0])
    assert "apply_chat_template" in code and "continue_final_message=True" in code
    code = code.replace("messages = [...]", f"messages = {messages!r}").replace("max_new_tokens=256", f"max_new_tokens={n}")
    monkeypatch.chdir(tmp_path)  # the card loads the model by its directory's name
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    text = tok.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    assert capsys.readouterr().out == greedy(model, tok, text, n, special=False) + "\n"

    # 3. --adapter-only: a PEFT adapter that plain peft puts on the base it names.
    adapter = tmp_path / "adapter"
    assert main(["export", str(run), "--out", str(adapter), "--adapter-only"]) == 0
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert not (adapter / "trainer_state.pt").exists() and not (adapter / "config.yaml").exists()
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert acfg["inference_mode"] is True
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(acfg["base_model_name_or_path"]),
                                           str(adapter)).eval()
    assert [greedy(peft_model, tok, q, n) for q in QUESTIONS] == raw


def test_export_tiny_run_card_accuracy_and_greedy_equality(smoke_run, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    assert main(["export", str(smoke_run), "--out", str(out)]) == 0
    assert "LoRA merged into random:tiny-qwen2, float32" in capsys.readouterr().err
    card = (out / "README.md").read_text()
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 3]
    assert f"{100 * evals[0]['eval/accuracy']:.1f}% at step 0 ->" in card and "lenient" in card
    assert "3 GRPO steps" in card and "`countdown`" in card and "Let me solve this step by step." in card
    assert 'ids = tokenizer(prompt, return_tensors="pt")' in card and "apply_chat_template" not in card  # text
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    raw = play(["--checkpoint", str(smoke_run), "--raw", "--max-new-tokens", "12"], ["3 7 25 -> 10"], monkeypatch,
               capsys)
    assert raw == [greedy(model, tok, "3 7 25 -> 10", 12)]
    assert oct((out / "model.safetensors").stat().st_mode)[-3:] != "600"


def test_adapter_only_then_export_that_adapter(smoke_run, tmp_path, monkeypatch, capsys):
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert main(["export", str(smoke_run / "checkpoints" / "step-3"), "--out", str(adapter), "--adapter-only"]) == 0
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert acfg["inference_mode"] is True and "library_name: peft" in (adapter / "README.md").read_text()
    # A bare adapter dir is a source too (its base from adapter_config.json; random bases draw seed 0).
    assert main(["export", str(adapter), "--out", str(merged), "--model", "random:tiny-qwen2"]) == 0
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(merged).state_dict()
    b = AutoModelForCausalLM.from_pretrained(_export(smoke_run, tmp_path / "direct")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _export(run, out):
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


def test_qlora_checkpoint_without_cuda_merges_into_the_full_precision_base(smoke_run, tmp_path, capsys):
    ckpt = tmp_path / "qlora-run" / "checkpoints" / "step-3"
    shutil.copytree(smoke_run / "checkpoints" / "step-3", ckpt)
    cfg = ckpt / "config.yaml"
    cfg.write_text(cfg.read_text().replace("finetune: lora", "finetune: qlora"))
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m"), "--dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err
    assert "QLoRA" in err and "full-precision base" in err
    card = (tmp_path / "m" / "README.md").read_text()
    assert "QLoRA (4-bit base)" in card and "full-precision base" in card and "bfloat16" in card
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"


def test_export_errors_are_one_line_and_change_nothing(smoke_run, tmp_path, capsys):
    def fails(argv: list[str], message: str) -> None:
        capsys.readouterr()
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        (line,) = [x for x in err.splitlines() if x.startswith("aha: error:")]
        assert message in line, err

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    fails([str(smoke_run), "--out", str(busy)], "already exists and is not empty")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    fails([str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "does not exist")
    fails([str(smoke_run), "--out", str(smoke_run / "checkpoints" / "step-3" / "x")], "inside the checkpoint")
    full = tmp_path / "full"
    full.mkdir()
    (full / "checkpoints").mkdir()
    fails([str(full), "--out", str(tmp_path / "o")], "no complete checkpoint")
    # A base that cannot load: nothing is left behind, not even the parent directory made for --out.
    fails([str(smoke_run), "--out", str(tmp_path / "new" / "o"), "--model", "/nonexistent/base"], "does not exist")
    assert not (tmp_path / "new").exists() and not (tmp_path / "o").exists()
    # --overwrite replaces a non-empty directory whole.
    assert main(["export", str(smoke_run), "--out", str(busy), "--overwrite"]) == 0
    assert not (busy / "keep.txt").exists() and (busy / "model.safetensors").exists()


def test_full_finetune_exports_its_weights_and_refuses_adapter_only(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    assert main(["train", "-c", "smoke", f"output_dir={run}", "finetune=full", "max_steps=1", "report_to=none",
                 "probe_every=0"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "a"), "--adapter-only"]) == 2
    assert "holds full fine-tuned weights" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "m")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "m").state_dict()
    saved = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-1").state_dict()
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
    assert "all weights (float32)" in (tmp_path / "m" / "README.md").read_text()


def test_qlora_with_cuda_merges_into_the_dequantized_4bit_base(smoke_run, tmp_path, monkeypatch, capsys):
    """The CUDA + bitsandbytes branch, with the 4-bit load stood in for (no GPU here): the base comes
    from load_base(quantize_4bit=True), is de-quantised, and takes the adapter."""
    import aha.export
    import aha.model
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "qlora-run" / "checkpoints" / "step-3"
    shutil.copytree(smoke_run / "checkpoints" / "step-3", ckpt)
    cfg = ckpt / "config.yaml"
    cfg.write_text(cfg.read_text().replace("finetune: lora", "finetune: qlora"))
    real, asked = aha.model.load_base, []

    def load_4bit(name, dtype, quantize_4bit=False, seed=0):
        asked.append(quantize_4bit)
        model, tok = real(name, torch.float32, seed=seed)
        model.dequantize = lambda dtype=None: model.to(dtype)  # stands in for bitsandbytes' NF4 -> float
        return model, tok

    monkeypatch.setattr(aha.export, "_can_dequantize", lambda: True)
    monkeypatch.setattr(aha.model, "load_base", load_4bit)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "q")]) == 0
    assert asked == [True] and "de-quantised 4-bit (NF4) base" in capsys.readouterr().err
    assert "de-quantised 4-bit (NF4) base" in (tmp_path / "q" / "README.md").read_text()
    monkeypatch.setattr(aha.model, "load_base", real)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "q").state_dict()
    b = AutoModelForCausalLM.from_pretrained(_export(smoke_run, tmp_path / "lora")).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
