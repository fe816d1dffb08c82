"""Sample the untrained SmolLM2-135M on a candidate reasoning task (issue 21's search, docs/reasoning-search.md):
lenient accuracy, the share of completions with an intermediate step, accuracy with and without steps.

usage: python bench/reasoning_probe.py CAND [N] [TOKENS] [TEMPERATURE]     (CAND_base: the base template)
Prints one JSON line; writes every completion to bench/results/probe-CAND-tT.jsonl. Steps and the final
answer are the project's own (`answers.arithmetic_steps`, `answers.final_number`), as in the metrics.
"""
import json, random, sys, time
from decimal import Decimal

import torch

from aha.model import load_policy
from aha.rollout import generate
from aha.sampling import SamplingParams
from aha.tasks._common import templated
from aha.tasks.answers import arithmetic_steps, final_number

PREFILL = "<think>\n"


def steps(full: str) -> int:
    return arithmetic_steps(full, final_number(full.removeprefix(PREFILL), PREFILL))


def lenient_ok(full: str, gold: int) -> bool:
    fin = final_number(full.removeprefix(PREFILL), PREFILL)
    return fin is not None and Decimal(fin) == Decimal(gold)


FMT = ("Solve the problem. Think step by step inside <think> </think> tags, then write only the final "
       "number inside <answer> </answer> tags. For example, for \"{eq}?\":\n"
       "<think>\n{work}\n</think>\n<answer>\n{r}\n</answer>")
FMT_NOEX = ("Solve the problem. Think step by step inside <think> </think> tags, then write only the final "
            "number inside <answer> </answer> tags, in this format:\n<think>\nreasoning\n</think>\n<answer>\nnumber\n</answer>")
NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack"]
ITEMS = ["apples", "books", "coins", "stickers", "marbles", "pens", "cards", "shells"]


def ex_single(rng, op, ans, lo=2, hi=20):
    while True:
        x, y = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "-" and y > x: x, y = y, x
        r = {"+": x + y, "-": x - y, "*": x * y}[op]
        if r != ans:
            return FMT.format(eq=f"What is {x} {op} {y}", work=f"{x} {op} {y} = {r}", r=r)


def cand(name, rng):
    if name == "sum3":
        a, b, c = (rng.randint(1, 20) for _ in range(3)); ans = a + b + c
        return f"What is {a} + {b} + {c}?", ans, ex_single(rng, "-", ans)
    if name == "sum3s":  # single digits
        a, b, c = (rng.randint(2, 9) for _ in range(3)); ans = a + b + c
        return f"What is {a} + {b} + {c}?", ans, ex_single(rng, "-", ans, 2, 9)
    if name == "sum4":
        xs = [rng.randint(1, 12) for _ in range(4)]; ans = sum(xs)
        return "What is " + " + ".join(map(str, xs)) + "?", ans, ex_single(rng, "-", ans)
    if name == "mul21":
        a, b = rng.randint(11, 49), rng.randint(2, 9); ans = a * b
        return f"What is {a} * {b}?", ans, ex_single(rng, "+", ans)
    if name == "mixed":  # a * b + c
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20); ans = a * b + c
        return f"What is {a} * {b} + {c}?", ans, ex_single(rng, "-", ans)
    if name == "mixedS":  # a * b + c, small
        a, b, c = rng.randint(2, 6), rng.randint(2, 6), rng.randint(1, 12); ans = a * b + c
        return f"What is {a} * {b} + {c}?", ans, ex_single(rng, "-", ans)
    if name == "mixedA":  # a * b + c, example is an addition
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20); ans = a * b + c
        return f"What is {a} * {b} + {c}?", ans, ex_single(rng, "+", ans)
    if name == "mixedSA":  # a * b + c, small, example is an addition
        a, b, c = rng.randint(2, 6), rng.randint(2, 6), rng.randint(1, 12); ans = a * b + c
        return f"What is {a} * {b} + {c}?", ans, ex_single(rng, "+", ans)
    if name == "mixedP":  # a * b + c, small, placeholder prompt
        a, b, c = rng.randint(2, 6), rng.randint(2, 6), rng.randint(1, 12); ans = a * b + c
        return f"What is {a} * {b} + {c}?", ans, FMT_NOEX
    if name == "muladdT":  # tiny: a, b 2..5, c 1..3
        a, b, c = rng.randint(2, 5), rng.randint(2, 5), rng.randint(1, 3); ans = a * b + c
        return f"What is {a} * {b} + {c}?", ans, ex_single(rng, "-", ans)
    if name == "addmul":  # c + a * b
        a, b, c = rng.randint(2, 6), rng.randint(2, 6), rng.randint(1, 12); ans = a * b + c
        return f"What is {c} + {a} * {b}?", ans, ex_single(rng, "-", ans)
    if name == "sum3t":  # a + b + c, 1..5
        a, b, c = (rng.randint(1, 5) for _ in range(3)); ans = a + b + c
        return f"What is {a} + {b} + {c}?", ans, ex_single(rng, "-", ans, 2, 9)
    if name == "double":  # twice a sum
        a, b = rng.randint(2, 9), rng.randint(2, 9); ans = 2 * (a + b)
        return f"What is twice the sum of {a} and {b}?", ans, ex_single(rng, "-", ans)
    if name == "sum2":  # the CPU demo's additions, for calibration
        a, b = rng.randint(0, 20), rng.randint(0, 20); ans = a + b
        return f"What is {a} + {b}?", ans, ex_single(rng, "-", ans)
    if name == "sum2big":  # two-digit sums with a carry
        while True:
            a, b = rng.randint(11, 89), rng.randint(11, 89)
            if a % 10 + b % 10 >= 10 and a + b < 100: break
        ans = a + b
        return f"What is {a} + {b}?", ans, ex_single(rng, "-", ans, 11, 99)
    if name == "addsub":  # a + b - c
        a, b = rng.randint(5, 20), rng.randint(2, 20); c = rng.randint(1, a + b - 1); ans = a + b - c
        return f"What is {a} + {b} - {c}?", ans, ex_single(rng, "*", ans, 2, 9)
    if name == "word2":
        n, i = rng.choice(NAMES), rng.choice(ITEMS)
        a, b = rng.randint(3, 20), rng.randint(2, 12); c = rng.randint(1, a + b - 1); ans = a + b - c
        q = f"{n} has {a} {i}, gets {b} more, then gives away {c}. How many {i} are left?"
        return q, ans, ex_single(rng, "*", ans, 2, 9)
    if name == "word2m":
        n, i = rng.choice(NAMES), rng.choice(ITEMS)
        a, b, c = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 10); ans = a * b + c
        q = f"{n} has {a} boxes with {b} {i} in each box and {c} loose {i}. How many {i} does {n} have?"
        return q, ans, ex_single(rng, "-", ans)
    if name == "countdown":
        while True:
            xs = [rng.randint(2, 12) for _ in range(3)]
            a, b, c = xs; ans = rng.choice([a + b + c, a * b + c, a * b - c, a + b - c])
            if ans > 0: break
        q = f"Using the numbers {a}, {b} and {c} once each with + - * /, make {ans}. Answer with the result."
        return q, ans, ex_single(rng, "+", -999)
    raise SystemExit(f"unknown {name}")


def main():
    name = sys.argv[1]; kind = name.removesuffix("_base"); n = int(sys.argv[2]) if len(sys.argv) > 2 else 96
    toks = int(sys.argv[3]) if len(sys.argv) > 3 else 80
    temp = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    G = 4 if temp > 0 else 1  # samples per problem
    rng = random.Random(name)
    probs = [cand(kind, rng) for _ in range(n // G)]
    pol = load_policy("smollm2-135m", finetune="full", device="cpu")
    prompts, golds = [], []
    for q, a, sysm in probs:
        for _ in range(G):
            tpl = "base" if name.endswith("_base") else "chat"
            prompts.append(templated(q, tpl, sysm, sysm, "<think>\n")); golds.append(a)
    torch.manual_seed(0)
    t = time.time()
    ro = generate(pol.model, pol.tokenizer, prompts, SamplingParams(max_new_tokens=toks, temperature=temp),
                  engine="native", batch_size=32)
    dt = time.time() - t
    rows = []
    for text, g, m in zip(ro.texts, golds, ro.completion_mask.sum(1).tolist()):
        full = "<think>\n" + text
        rows.append(dict(text=full, gold=g, ok=lenient_ok(full, g), st=steps(full), len=m))
    ok = sum(r["ok"] for r in rows) / len(rows)
    ws = [r for r in rows if r["st"] > 0]; wo = [r for r in rows if r["st"] == 0]
    acc = lambda rs: (sum(r["ok"] for r in rs) / len(rs)) if rs else float("nan")
    tagged = sum("</answer>" in r["text"] for r in rows) / len(rows)
    print(json.dumps(dict(cand=name, temp=temp, n=len(rows), tokens=toks, acc=round(ok, 3), steps_share=round(len(ws) / len(rows), 3),
                          acc_steps=round(acc(ws), 3), n_steps=len(ws), acc_nosteps=round(acc(wo), 3),
                          mean_len=round(sum(r["len"] for r in rows) / len(rows), 1), tagged=round(tagged, 3),
                          secs=round(dt))))
    with open(f"bench/results/probe-{name}-t{temp}.jsonl", "w") as f:
        for r in rows: f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
