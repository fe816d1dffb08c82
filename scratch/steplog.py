import json, sys
for l in open(sys.argv[1] + "/metrics.jsonl"):
    m = json.loads(l)
    if "reward" not in m: continue
    keys = ["step", "reward", "rewards/correctness", "format_rate", "completion_len", "entropy", "answer_collapse", "time/step", "step_time"]
    print(" ".join(f"{k.split('/')[-1]}={m[k]:.3g}" if isinstance(m.get(k), float) else f"{k.split('/')[-1]}={m.get(k)}" for k in keys if k in m))
