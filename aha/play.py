"""`aha play`: chat with a checkpoint, a LoRA adapter or a model, with s1-style budget forcing.

    aha play --checkpoint runs/cpu-demo                  # interactive, the run's task template
    aha play --model smollm2-135m --min-think 200         # "Wait" until 200 thinking tokens
    printf 'What is 2+3?\\n' | aha play --model M          # scripted: one answer per input line

Each question goes through the task's prompt template (`Task.user_prompt`; gsm8k: the question as
is; countdown: "3 7 25 50 -> 75", anything else is sent raw), so the model sees what it was
trained on.

Budget forcing (Muennighoff et al. 2025, "s1: Simple test-time scaling"): thinking tokens are
the tokens generated before `</think>` (the templates pre-fill `<think>`). With --min-think N an
earlier `</think>` (or EOS) is removed and "Wait" appended, so the model keeps thinking; with
--max-think N, `\\n</think>\\n<answer>\\n` is appended at N thinking tokens and the model goes on
to answer (s1 appends "Final Answer:"; our tasks answer in <answer> tags). That needs our own
decode loop: `generate_forced` - one token at a time with the KV cache; after a rollback the cache
is rebuilt from the kept tokens (one prefill, rare, and free of any cache-cropping API).

An answer ends at EOS (or a chat template's end-of-turn token), just after `</answer>`, or before
a turn the model starts on its own ("User:"); one sampling RNG, seeded once with --seed, serves
the whole session, so sampled answers differ from turn to turn. Library warnings are kept out of
the streamed answer.

In a terminal questions form a conversation (chat templates keep the turns; text templates append
the next "User:" turn to the transcript) until /reset. With piped stdin each line is answered on
its own, nothing but answers goes to stdout, and EOF exits 0.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aha.tasks import Messages, Task, prompt_prefill

THINK_END = "</think>"
WAIT = "Wait"
FORCED_END = "\n</think>\n<answer>\n"
ANSWER_END = "</answer>"
TURN_STOPS = ("\nUser:", "\nHuman:", "\nAssistant:")  # the model starting a turn of its own
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")

HELP = """commands:
  /reset          forget the conversation and restore the command-line settings
  /temp X         sampling temperature (0 = greedy)
  /max N          max new tokens per answer
  /min-think N    force at least N thinking tokens ("Wait" replaces an early </think>); 0 = off
  /max-think N    force </think> after N thinking tokens; 0 = off
  /help           this text
  /quit           leave (so does Ctrl-D)"""


@dataclass
class Settings:
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    min_think: int = 0
    max_think: int = 0
    seed: int = 0


# ---------------------------------------------------------------------------- decoding

def _sample(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """Next token from the last position's logits (V,) by the rollout engines' rule (aha/sampling.py):
    greedy at temperature 0, else softmax(logits / T) over the top-p nucleus, one uniform from `generator`."""
    from aha.sampling import SamplingParams, sample

    params = SamplingParams(temperature=temperature, top_p=top_p)
    return int(sample(logits.float()[None], params, generator)[0])


class _Streamer:
    """Emits newly decoded text, holding back what is not final yet: a trailing partial UTF-8
    character, and a tail that could be the start of a tag in `hold` (`</think>` while forcing is
    armed, the turn markers that stop the answer)."""

    def __init__(self, on_text: Callable[[str], None] | None):
        self.on_text, self.sent = on_text, 0

    def push(self, text: str, hold: Sequence[str] = (), final: bool = False) -> str:
        end = len(text)
        if not final:
            end = len(text.rstrip("\ufffd"))
            for tag in hold:
                end = min(end, _partial_tag_start(text, tag))
        if end > self.sent and self.on_text is not None:
            self.on_text(text[self.sent:end])
        self.sent = max(self.sent, end)
        return text


def _partial_tag_start(text: str, tag: str) -> int:
    """Where a suffix of `text` that is a proper prefix of `tag` starts (len(text) if none)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return len(text) - k
    return len(text)


def generate_forced(model: Any, tokenizer: Any, prompt_ids: Sequence[int], settings: Settings,
                    eos_ids: Sequence[int], on_text: Callable[[str], None] | None = None,
                    generator: Any = None) -> str:
    """Decode one completion token by token with budget forcing; returns its text.

    `on_text` receives the text as it becomes final; the pieces add up to the returned text. The
    answer ends at EOS, after `</answer>`, or before a new turn the model starts on its own
    ("User:", ...). `generator`: the sampling RNG, kept by the caller across answers (default: a
    fresh one seeded with `settings.seed`).
    """
    import torch

    device = next(model.parameters()).device
    gen = generator if generator is not None else torch.Generator(device="cpu").manual_seed(settings.seed)
    prompt = list(prompt_ids)
    out: list[int] = []  # completion token ids
    thinking = True  # until `</think>` is written (or forced); the templates pre-fill `<think>`
    cache, n_cached = None, 0  # the KV cache covers the first n_cached tokens of prompt + out
    streamer = _Streamer(on_text)
    eos = set(eos_ids)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    with torch.no_grad():
        while len(out) < settings.max_new_tokens:
            seq = prompt + out
            if n_cached > len(seq):  # a rollback dropped cached tokens: rebuild from what is kept
                cache, n_cached = None, 0
            res = model(input_ids=torch.tensor([seq[n_cached:]], device=device), past_key_values=cache,
                        use_cache=True)
            cache, n_cached = res.past_key_values, len(seq)
            token = _sample(res.logits[0, -1], settings.temperature, settings.top_p, gen)
            if token in eos:
                if not (thinking and len(out) < settings.min_think):
                    break
                out += encode(WAIT)  # an early EOS ends thinking too: keep thinking instead
            else:
                out.append(token)
            if thinking:
                text = tokenizer.decode(out, skip_special_tokens=True)
                cut = text.find(THINK_END)
                if cut >= 0:
                    before = _drop_from(out, tokenizer, cut)  # the thinking tokens, without the tag
                    if len(before) < settings.min_think:
                        # Too early: drop the tag, re-add any text of the dropped tokens that came
                        # before it, and append "Wait" (s1's budget forcing).
                        kept = tokenizer.decode(before, skip_special_tokens=True)
                        lost = text[len(kept):cut] if text.startswith(kept) else ""
                        out = before + encode(lost + WAIT)
                    else:
                        thinking = False
                elif settings.max_think and len(out) >= settings.max_think:
                    out += encode(FORCED_END)
                    thinking = False
            forcing = thinking and settings.min_think > 0
            text = tokenizer.decode(out, skip_special_tokens=True)
            end = stop_at(text, answer_end=not forcing)
            if end is not None:
                return streamer.push(text[:end], final=True)
            streamer.push(text, hold=(THINK_END, *TURN_STOPS) if forcing else TURN_STOPS)
    return streamer.push(tokenizer.decode(out, skip_special_tokens=True), final=True)


def stop_at(text: str, answer_end: bool = True) -> int | None:
    """Where the assistant's turn ends in `text`: before a turn the model invents ("\nUser:", ...)
    or, with `answer_end`, just after the first `</answer>`; None when it has not ended."""
    cuts = [i for tag in TURN_STOPS if (i := text.find(tag)) >= 0]
    if answer_end and (i := text.find(ANSWER_END)) >= 0:
        cuts.append(i + len(ANSWER_END))
    return min(cuts) if cuts else None


def turn_end_ids(tokenizer: Any) -> list[int]:
    """Ids of the chat templates' end-of-turn tokens this tokenizer has (a base model's EOS is
    often only <|endoftext|>, and it would write on past <|im_end|> into a new turn)."""
    vocab = tokenizer.get_vocab()
    return sorted({vocab[t] for t in TURN_END_TOKENS if t in vocab})


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """No library warning (transformers' cache-API deprecation, ...) in the middle of an answer."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _drop_from(ids: list[int], tokenizer: Any, cut: int) -> list[int]:
    """The longest prefix of `ids` whose text ends before character `cut`."""
    keep = len(ids)
    while keep and len(tokenizer.decode(ids[:keep], skip_special_tokens=True)) > cut:
        keep -= 1
    return ids[:keep]


# ---------------------------------------------------------------------------- prompts

def make_prompt(task: Task | None, question: str) -> str | Messages:
    """The prompt for a typed question: the task's template around it (`Task.user_prompt`), or the
    text as typed without a task (--raw)."""
    return question if task is None else task.user_prompt(question)


@dataclass
class Conversation:
    """Previous turns: chat messages, or the text transcript for text templates."""

    messages: list[dict[str, str]] = field(default_factory=list)
    transcript: str = ""

    def prompt(self, fresh: Any) -> Any:
        """This turn's prompt: the fresh single-turn prompt continued from the history."""
        if isinstance(fresh, list):
            if not self.messages:
                return fresh
            return self.messages + [m for m in fresh if m.get("role") != "system"]
        turn = fresh.rfind("\nUser:")
        return self.transcript + fresh[turn:] if self.transcript and turn >= 0 else fresh

    def add(self, prompt: Any, completion: str) -> None:
        if isinstance(prompt, list):
            done = [dict(m) for m in prompt]
            if done and done[-1].get("role") == "assistant":
                done[-1]["content"] += completion
            else:
                done.append({"role": "assistant", "content": completion})
            self.messages = done
        else:
            self.transcript = prompt + completion


# ---------------------------------------------------------------------------- the command

class Session:
    """The read-answer loop and its commands."""

    def __init__(self, model: Any, tokenizer: Any, task: Any, settings: Settings):
        from aha.rollout import eos_token_ids

        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.defaults = settings
        self.settings = Settings(**vars(settings))
        self.history = Conversation()
        self.eos = sorted(set(eos_token_ids(tokenizer, model)) | set(turn_end_ids(tokenizer)))
        self.generator = self._seeded()

    def _seeded(self) -> Any:
        """One sampling RNG for the session (seeded once, and again on /reset): answers to the
        same question differ when sampling, and a whole session replays from --seed."""
        import torch

        return torch.Generator(device="cpu").manual_seed(self.settings.seed)

    def loop(self, interactive: bool, jsonl: bool = False) -> int:
        while True:
            try:
                line = input("> ") if interactive else sys.stdin.readline()
            except EOFError:  # Ctrl-D at the prompt: leave
                print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:  # Ctrl-C: leave with the shell's code for an interrupt
                print(file=sys.stderr)
                return 130
            if not interactive and line == "":  # EOF on a pipe ("" is not a blank line: that is "\n")
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "quit":
                    return 0
                continue
            try:
                self.answer(line, interactive, jsonl)
            except KeyboardInterrupt:  # Ctrl-C stops this answer, not the session
                print("\n[stopped]", file=sys.stderr)

    def answer(self, question: str, interactive: bool, jsonl: bool) -> str:
        from aha.rollout import encode_prompts

        fresh = make_prompt(self.task, question)
        prompt = self.history.prompt(fresh) if interactive else fresh
        ids, _ = encode_prompts(self.tokenizer, [prompt])
        head = prompt_prefill(prompt)  # shown with the answer, so the format reads whole
        stream = None if jsonl else _write
        if stream:
            stream(head)
        with quiet_libraries():
            completion = generate_forced(self.model, self.tokenizer, ids[0].tolist(), self.settings, self.eos, stream,
                                         self.generator)
        if jsonl:
            answer = (self.task or Task()).final_answer(head + completion)
            print(json.dumps({"question": question, "completion": head + completion, "answer": answer}), flush=True)
        else:
            _write("\n")
        if interactive:
            self.history.add(prompt, completion)
        return completion

    def command(self, line: str) -> str | None:
        name, _, value = line.partition(" ")
        value = value.strip()
        s = self.settings
        try:
            if name in ("/quit", "/exit", "/q"):
                return "quit"
            if name == "/reset":
                self.settings, self.history = Settings(**vars(self.defaults)), Conversation()
                self.generator = self._seeded()
                _note("conversation and settings reset")
            elif name == "/temp":
                s.temperature = _non_negative(float(value), name)
                _note(f"temperature {s.temperature:g}")
            elif name == "/max":
                s.max_new_tokens = max(1, int(value))
                _note(f"max new tokens {s.max_new_tokens}")
            elif name == "/min-think":
                s.min_think = _non_negative(int(value), name)
                _note(f"min thinking tokens {s.min_think or 'off'}")
            elif name == "/max-think":
                s.max_think = _non_negative(int(value), name)
                _note(f"max thinking tokens {s.max_think or 'off'}")
            elif name == "/help":
                _note(HELP)
            else:
                _note(f"unknown command {name}; /help lists them")
        except ValueError:
            _note(f"{name} needs a number >= 0, e.g. {name} {'0.7' if name == '/temp' else 256}")
        return None


def _non_negative(x: float, name: str) -> Any:
    if x < 0:
        raise ValueError(name)
    return x


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _note(text: str) -> None:
    """Messages for the person, never on stdout: stdout carries only answers."""
    print(text, file=sys.stderr)
