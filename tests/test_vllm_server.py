"""Server mode (`rollout.engine=vllm-server`, aha/rollout/vllm_server.py), without vLLM: a stand-in HTTP
server on 127.0.0.1 (a thread) checks what the engine sends and how it reads answers and refusals, and
the CLI's one-line errors and start helper. Against a real vLLM server: tests/test_vllm_server_live.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from aha.config import LoraConfig
from aha.errors import ConfigError, ModelError
from aha.sampling import SamplingParams
from aha.rollout.vllm_server import VLLMServerEngine, _split, server_command
from vllm_kit import free_port

REPO = Path(__file__).resolve().parents[1]


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
