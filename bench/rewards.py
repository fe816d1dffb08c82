"""How long the rewards take on hostile text: docs/design.md ("Rewards never raise") asks that a reward
"always returns in bounded time, whatever the model wrote"; the tests check the values
(tests/test_rewards_property.py), this measures the time, which a shared test machine's clock cannot judge.

    python bench/rewards.py [--budget-ms 50] [--json bench/results/rewards-cpu.json]

Every reward of every task, and its lenient grader and reasoning-steps count, on each hostile text
of the property tests (1 MB of digits, 20,000 `<answer>` tags, `9**9**9**9`, ...) in each wrapping;
the Countdown solver on 200 random 4-number puzzles (mostly unsolvable: full searches). It prints the slowest cases and exits 1 if any reward
call took longer than the budget.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the property tests' corpus

from test_rewards_property import CASES, CRAFTED, WRAPS  # noqa: E402

from aha.tasks.countdown import solve  # noqa: E402


def time_rewards() -> list[tuple[float, str]]:
    """(seconds, what) for every reward call on every hostile text, slowest first."""
    out = []
    for crafted_name, crafted in CRAFTED.items():
        for wrap_name, wrap in WRAPS.items():
            text = wrap.replace("{}", crafted)
            for task, ex in CASES:
                # the rewards, and the graders and step count that run on every completion beside them
                checks = {**{name: fn for name, (fn, _) in task.rewards.items()},
                          "is_correct_lenient": task.is_correct_lenient, "reasoning_steps": task.reasoning_steps}
                for name, fn in checks.items():
                    start = time.perf_counter()
                    fn(text, ex)
                    out.append((time.perf_counter() - start, f"{ex.id} {name} on {crafted_name}/{wrap_name}"))
    return sorted(out, reverse=True)


def time_solver(n: int = 200) -> float:
    """Mean seconds of one `solve` on random 4-number puzzles."""
    rng = random.Random(0)
    cases = [([rng.randint(1, 100) for _ in range(4)], rng.randint(1, 100)) for _ in range(n)]
    start = time.perf_counter()
    for nums, target in cases:
        solve(nums, target)
    return (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-ms", type=float, default=50.0, help="the most one reward call may take")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args(argv)
    rewards = time_rewards()
    solver = time_solver()
    for seconds, what in rewards[:5]:
        print(f"{seconds * 1000:8.2f} ms  {what}")
    print(f"{len(rewards)} reward calls, slowest {rewards[0][0] * 1000:.2f} ms (budget {args.budget_ms:g} ms); "
          f"countdown solve {solver * 1000:.2f} ms per puzzle")
    if args.json:
        Path(args.json).write_text(json.dumps({"reward_calls": len(rewards), "slowest_ms": rewards[0][0] * 1000,
                                               "slowest": rewards[0][1], "budget_ms": args.budget_ms,
                                               "solve_ms": solver * 1000}, indent=2) + "\n")
    return 0 if rewards[0][0] * 1000 <= args.budget_ms else 1


if __name__ == "__main__":
    sys.exit(main())
