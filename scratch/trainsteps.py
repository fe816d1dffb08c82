"""Per training step: correct share, steps share, acc with/without steps, mean length (completions.jsonl)."""
import json, sys
from collections import defaultdict
sys.path[:0] = [".", "scratch"]
from steps import steps

by = defaultdict(list)
for l in open(sys.argv[1] + "/completions.jsonl"):
    r = json.loads(l); by[r["step"]].append(r)
for st, rows in sorted(by.items()):
    s = [steps("<think>\n" + r["completion"]) > 0 for r in rows]
    c = [r["correct"] for r in rows]
    ws = [x for x, y in zip(c, s) if y]; wo = [x for x, y in zip(c, s) if not y]
    f = lambda v: f"{100*sum(v)/len(v):3.0f}%" if v else "   -"
    print(f"step {st:2d} n={len(rows)} correct={f(c)} steps={f(s)} acc|steps={f(ws)} acc|no={f(wo)} "
          f"len={sum(r.get('length', 0) for r in rows)/len(rows):.1f}")
