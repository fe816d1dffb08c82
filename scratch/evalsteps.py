"""Steps share / accuracy / length per eval step from a run's eval_completions.jsonl.
usage: python scratch/evalsteps.py RUN_DIR [RUN_DIR...]"""
import json, sys
from collections import defaultdict
sys.path[:0] = [".", "scratch"]
from steps import steps, lenient_ok

import yaml
from aha.tasks import get_task

for run in sys.argv[1:]:
    cfg = yaml.safe_load(open(f"{run}/config.yaml"))
    gold = {e.id: e.target for e in get_task(cfg["task"], **cfg.get("task_options", {})).examples("test")}
    by = defaultdict(list)
    for l in open(f"{run}/eval_completions.jsonl"):
        by[json.loads(l)["step"]].append(json.loads(l))
    for st, rows in sorted(by.items()):
        keys = rows[0].keys()
        texts = ["<think>\n" + r["completion"] for r in rows]
        golds = [gold[r["id"]] for r in rows]
        ok = [lenient_ok(t, g) for t, g in zip(texts, golds)]
        s = [steps(t) > 0 for t in texts]
        ws = [o for o, x in zip(ok, s) if x]; wo = [o for o, x in zip(ok, s) if not x]
        ln = [r.get("length", r.get("tokens", len(r["completion"]))) for r in rows]
        f = lambda v: f"{100*sum(v)/len(v):.0f}%" if v else "-"
        print(f"{run} step {st}: n={len(rows)} lenient={f(ok)} strict={f([bool(r.get('correct')) for r in rows])} "
              f"steps_share={f(s)} acc|steps={f(ws)} acc|nosteps={f(wo)} mean_len={sum(ln)/len(ln):.1f}")
