"""`aha play`: budget forcing on a scripted model, the KV-cache decode loop against `generate`,
streaming, the prompt helpers, and the piped (scripted) mode end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from aha.cli import main
from aha.model import byte_tokenizer, load_policy
from aha.play import FORCED_END, Conversation, Settings, generate_forced, make_prompt
from aha.rollout import encode_prompts, eos_token_ids, generate
from aha.sampling import SamplingParams

TOK = byte_tokenizer()
EOS = TOK.eos_token_id


class ScriptedLM(torch.nn.Module):
    """A fake causal LM: `policy(completion_text)` names the next character (None = EOS).

    It sees the sequence only through what the decode loop feeds it plus its own "KV cache" (the
    ids fed so far), so a loop that rolled back wrongly or fed the wrong tokens would change what
    it writes: an honest test of the forcing logic, not of a mock."""

    def __init__(self, prompt_len: int, policy: Callable[[str], str | None]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the loop a device
        self.prompt_len, self.policy = prompt_len, policy
        self.fed: list[int] = []  # tokens fed per call

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        self.fed.append(input_ids.shape[1])
        ids = (past_key_values or []) + input_ids[0].tolist()
        completion = TOK.decode(ids[self.prompt_len:], skip_special_tokens=True)
        char = self.policy(completion)
        logits = torch.zeros(1, input_ids.shape[1], len(TOK))
        logits[0, -1, EOS if char is None else char.encode()[0]] = 100.0
        return SimpleNamespace(logits=logits, past_key_values=ids)


def scripted(script: str, after: str = "Wait") -> Callable[[str], str | None]:
    """Writes `script` from the start, and again from each `after` the loop inserts."""
    def policy(text: str) -> str | None:
        since = text.rsplit(after, 1)[-1]
        return script[len(since)] if len(since) < len(script) else None
    return policy


PROMPT = TOK("Q?\nAssistant: <think>\n").input_ids


def run_forced(policy, chunks: list[str] | None = None, **settings) -> str:
    model = ScriptedLM(len(PROMPT), policy)
    on_text = chunks.append if chunks is not None else None
    return generate_forced(model, TOK, PROMPT, Settings(**settings), [EOS], on_text)


def test_scripted_model_without_forcing_writes_its_script():
    assert run_forced(scripted("ab\n</think>\n<answer>1</answer>")) == "ab\n</think>\n<answer>1</answer>"


def test_min_think_replaces_early_think_end_with_wait():
    chunks: list[str] = []
    text = run_forced(scripted("ab\n</think>\n<answer>1</answer>"), chunks, min_think=20)
    # Thinking tokens are the tokens before </think> (bytes here): 3, 10, 17 < 20 are too early,
    # each time "</think>" is dropped and "Wait" appended; at 24 the tag is accepted.
    assert text == "ab\nWaitab\nWaitab\nWaitab\n</think>\n<answer>1</answer>"
    assert text.index("</think>") >= 20
    assert "".join(chunks) == text  # streaming never showed a dropped tag


def test_min_think_keeps_text_that_shared_a_token_with_the_tag():
    # "x.</think>" as ONE token: the "x." before the tag must survive the rollback.
    tok = byte_tokenizer()
    tok.add_tokens(["x.</think>"])
    fused = tok.convert_tokens_to_ids("x.</think>")

    class Fused(ScriptedLM):
        def forward(self, input_ids, past_key_values=None, use_cache=True):
            ids = (past_key_values or []) + input_ids[0].tolist()
            text = tok.decode(ids[self.prompt_len:], skip_special_tokens=True)
            logits = torch.zeros(1, input_ids.shape[1], len(tok))
            logits[0, -1, tok.eos_token_id if text.endswith("</think>") else fused] = 100.0
            return SimpleNamespace(logits=logits, past_key_values=ids)

    prompt = tok("Q?\nAssistant: <think>\n").input_ids
    model = Fused(len(prompt), lambda t: None)
    text = generate_forced(model, tok, prompt, Settings(min_think=5), [tok.eos_token_id])
    assert text == "x.Waitx.</think>"  # 0 < 5 thinking tokens: forced; then 6 >= 5: accepted


def test_early_eos_while_thinking_also_becomes_wait():
    text = run_forced(scripted("ab"), min_think=8)  # never closes thinking, stops with EOS after "ab"
    assert text == "abWaitab"  # EOS after 2 tokens: too early, "Wait"; after 8: accepted (8 >= 8)


def test_max_think_forces_the_end_of_thinking_then_the_answer():
    def policy(text: str) -> str | None:
        if "<answer>\n" in text:
            tail = text.split("<answer>\n", 1)[1]
            return "42\n</answer>"[len(tail)] if len(tail) < len("42\n</answer>") else None
        return "x"  # would think forever

    chunks: list[str] = []
    text = run_forced(policy, chunks, max_think=10, max_new_tokens=200)
    assert text == "x" * 10 + FORCED_END + "42\n</answer>"
    assert "".join(chunks) == text


def test_max_new_tokens_stops_the_loop():
    assert run_forced(lambda t: "x", max_new_tokens=7) == "x" * 7


def test_rollback_rebuilds_the_cache_once_per_forcing():
    model = ScriptedLM(len(PROMPT), scripted("ab\n</think>\nok"))
    text = generate_forced(model, TOK, PROMPT, Settings(min_think=5), [EOS])
    assert text == "ab\nWaitab\n</think>\nok"
    # One token per call, except the first prefill and one rebuild after the single rollback
    # (the prompt plus the kept "ab\nWait").
    assert [n for n in model.fed if n > 1] == [len(PROMPT), len(PROMPT) + len("ab\nWait")]


def test_greedy_decode_loop_matches_rollout_generate():
    """The KV-cache loop on a real (tiny, random) transformer gives what `generate` gives."""
    policy = load_policy("random:tiny-qwen2", "full", device="cpu", seed=1)
    model, tok = policy.model.eval(), policy.tokenizer
    prompt = "A conversation.\nUser: 3 + 4?\nAssistant: <think>\n"
    ro = generate(model, tok, [prompt], SamplingParams(max_new_tokens=24, temperature=0.0))
    ids, _ = encode_prompts(tok, [prompt])
    ours = generate_forced(model, tok, ids[0].tolist(), Settings(max_new_tokens=24), eos_token_ids(tok, model))
    assert ours == ro.texts[0]


def test_sampling_follows_the_engines_rule():
    """`aha play` samples by aha/sampling.py's rule (the engines' and the trainer's): the shared sampler's
    tokens at the same seed, inside its top-p nucleus; greedy at temperature 0."""
    from aha.play import _sample
    from aha.sampling import sample, truncate_logits

    logits = torch.randn(300, generator=torch.Generator().manual_seed(0))
    mine, shared = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    drawn = [_sample(logits, 0.8, 0.9, mine) for _ in range(50)]
    assert drawn == [int(sample(logits[None], SamplingParams(temperature=0.8, top_p=0.9), shared)) for _ in range(50)]
    assert torch.isfinite(truncate_logits(logits / 0.8, 0, 0.9))[drawn].all() and len(set(drawn)) > 1
    assert _sample(logits, 0.0, 1.0, mine) == int(logits.argmax())


def test_make_prompt_uses_the_task_template():
    from aha.tasks import get_task

    gsm = get_task("gsm8k")
    assert make_prompt(gsm, "What is 2+3?") == gsm.prompt("What is 2+3?")
    cd = get_task("countdown")
    assert make_prompt(cd, "3 7 25 50 -> 75") == cd.prompt([3, 7, 25, 50], 75)
    assert make_prompt(cd, "3, 7, 25 = 75") == cd.prompt([3, 7, 25], 75)
    assert make_prompt(cd, "hello there") == "hello there"  # not a puzzle: sent raw
    assert make_prompt(None, "raw") == "raw"


def test_conversation_continues_text_and_chat_prompts():
    from aha.tasks import get_task

    gsm = get_task("gsm8k")
    conv = Conversation()
    first = conv.prompt(gsm.prompt("one?"))
    conv.add(first, "1\n</think>\n<answer>\n1\n</answer>")
    second = conv.prompt(gsm.prompt("two?"))
    assert second.startswith(first + "1\n</think>") and second.endswith("User: two?\nAssistant: <think>\n")
    assert second.count("A conversation between") == 1

    chat = get_task("gsm8k", template="chat")
    conv = Conversation()
    first = conv.prompt(chat.prompt("one?"))
    conv.add(first, "done")
    msgs = conv.prompt(chat.prompt("two?"))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[2]["content"] == "<think>\ndone" and msgs[3]["content"] == "two?"


def _play(monkeypatch, capsys, stdin: str, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))  # not a TTY: the piped mode
    rc = main(["play", "--model", "random:tiny-qwen2", "--device", "cpu", "--max-new-tokens", "12", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_piped_jsonl_answers_each_line_and_commands_print_nothing(monkeypatch, capsys):
    rc, out, err = _play(monkeypatch, capsys, "What is 2+3?\n/temp 0.7\n\nHow many legs has a cat?\n", "--jsonl")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["question"] for r in rows] == ["What is 2+3?", "How many legs has a cat?"]
    assert all(r["completion"].startswith("<think>\n") for r in rows)
    assert "temperature 0.7" in err and "/help" not in out


def test_piped_play_with_budget_forcing_and_countdown(monkeypatch, capsys):
    rc, out, _ = _play(monkeypatch, capsys, "3 7 25 50 -> 75\n", "--task", "countdown", "--max-think", "4")
    assert rc == 0
    assert out.startswith("Let me solve this step by step.\n<think>") and FORCED_END in out


def test_play_through_a_real_pipe_answers_two_questions_and_exits_at_eof(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "aha", "play", "--model", "random:tiny-qwen2", "--device", "cpu",
         "--max-new-tokens", "8", "--jsonl"],
        input="What is 2+3?\nWhat is 10-4?\n", capture_output=True, text=True, timeout=120, cwd=tmp_path,
        check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["question"] == "What is 10-4?"


def test_play_missing_checkpoint_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    rc = main(["play", "--checkpoint", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--min-think", "10", "--max-think", "5"], []])
def test_play_bad_arguments_exit_2(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    argv = ["play", *args] if not args else ["play", "--model", "random:tiny-qwen2", *args]
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_piped_play_with_a_smoke_checkpoint_uses_its_task(tmp_path_factory, monkeypatch, capsys):
    from aha.config import load_config
    from aha.train import train

    run = tmp_path_factory.getbasetemp() / "smoke-run"  # shared with test_eval / test_report
    if not (run / "checkpoints" / "step-3" / "meta.json").is_file():
        train(load_config("smoke", [f"output_dir={run}", "tensorboard=false"]), overwrite=True)
    monkeypatch.setattr(sys, "stdin", io.StringIO("3 7 25 50 -> 75\n1 2 3 -> 6\n"))
    assert main(["play", "--checkpoint", str(run), "--max-new-tokens", "6", "--jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The smoke run trained on countdown: its template (and pre-fill) is applied to each line.
    assert len(rows) == 2 and all(r["completion"].startswith("Let me solve this step by step.\n<think>") for r in rows)


def test_ctrl_c_at_the_prompt_exits_130(monkeypatch, capsys):
    """Ctrl-C leaves with the shell's interrupt code (it exited 0, like Ctrl-D)."""
    class Interrupting(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt
    monkeypatch.setattr(sys, "stdin", Interrupting())
    assert main(["play", "--model", "random:tiny-qwen2", "--device", "cpu", "--max-new-tokens", "4"]) == 130
