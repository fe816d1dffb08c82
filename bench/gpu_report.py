"""Reading bench/gpu_check.py's results: the CUDA tests' JUnit XML, the markdown table for BENCHMARKS.md's
GPU section, and the merge of several calls (a second call runs what the first one's budget skipped)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def parse_junit(path: Path) -> dict[str, Any]:
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = ("failed" if tag != "skipped" else "skipped"), (el.get("message") or "")[:400]
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                      **({"message": message} if message else {})})
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "skipped")}
    return {**counts, "tests": tests}


# ---------------------------------------------------------------------------- the markdown

def flat_sections(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, rec in result["sections"].items():
        if name == "presets":
            out += [(f"preset:{p}", r) for p, r in rec.items()]
        else:
            out.append((name, rec))
    return out


def gib(n: Any) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, (int, float)) else "-"


def markdown(result: dict[str, Any]) -> str:
    """BENCHMARKS.md's GPU section from the JSON of one call (or of several, merged by --render)."""
    s = result["sections"]
    get = lambda name: s.get(name, {}).get("result") or {}  # noqa: E731
    env = get("env")
    versions = env.get("versions", {})
    check = result["check"]
    device = env.get("device_name") or (
        "simulated (the plan at assumed durations, no figures)" if check.get("simulated") else "no GPU (dry run on the CPU: the layout, not figures)")
    lines = [f"### {device}" + (f", {gib(env['device_memory_bytes'])}" if env.get("device_memory_bytes") else ""),
             "",
             f"{result['check'].get('started', '')}: `{result['check'].get('command', '')}`, "
             f"{result['check'].get('wall_s', '?')} s. torch {versions.get('torch')}, transformers "
             f"{versions.get('transformers')}, peft {versions.get('peft')}, bitsandbytes {versions.get('bitsandbytes')}, "
             f"TRL {versions.get('trl')}, JAX {versions.get('jax')}; driver {env.get('nvidia_smi', '-')}.", "",
             "| section | status | seconds | peak memory |", "|---|---|---|---|"]
    for name, rec in flat_sections(result):
        mem = (rec.get("result") or {}).get("memory", {}).get("peak_bytes")
        lines.append(f"| {name} | {rec['status']} | {rec.get('seconds', '-')} | {gib(mem)} |")
    if check.get("rerun"):
        lines += ["", f"`{check['rerun']}`"]
    tests = get("cuda_tests")
    if tests:
        failed = [t["name"] for t in tests["tests"] if t["outcome"] != "passed"]
        lines += ["", f"CUDA tests (`pytest -m cuda`): {tests['passed']} passed, {tests['failed']} failed, "
                      f"{tests['skipped']} skipped" + (f" ({', '.join(failed)})" if failed else "") + "."]
    ro = get("rollout")
    if ro.get("engines"):
        lines += ["", f"Rollout (`bench/rollout.py`, {ro['model'].split('/')[-1]}, {ro['dtype']}, {ro['prompts']} prompts "
                      f"x G={ro['group']}, {ro['new_tokens']} new tokens, prompts {ro['prompt_tokens']['min']}-"
                      f"{ro['prompt_tokens']['max']} tokens; goal: native >= 8x HF and >= 50% of the floor):", "",
                  "| engine | tokens/s | vs HF | of the bandwidth floor |", "|---|---|---|---|"]
        frac = ro.get("fraction_of_floor")
        for name, e in ro["engines"].items():
            f = f"{frac[name]:.1%}" if isinstance(frac, dict) else "needs CUDA"
            lines.append(f"| {name} | {e['tokens_per_s']:.0f} | {ro['ratio_vs_hf'][name]:.2f}x | {f} |")
    st = get("step")
    if isinstance(st.get("aha"), dict):
        lines += ["", f"GRPO step (`bench/step.py -c rtx5090`: {st['model'].split('/')[-1]}, {st['finetune']} "
                      f"r64, {st['prompts_per_step']} prompts x G={st['num_generations']}, {st['max_new_tokens']} tokens, "
                      f"engine {st['engine']}; goals: >= 4x TRL, <= 8 GB):", "",
                  "| | step | generation | update | peak memory |", "|---|---|---|---|---|"]
        for side in ("aha", "trl"):
            v = st.get(side)
            if isinstance(v, dict):
                label = "aha" if side == "aha" else f"TRL {v.get('version', '')}"
                lines.append(f"| {label} | {v['step_time']:.2f} s | {v['gen_time']:.2f} s | {v['update_time']:.2f} s | "
                             f"{gib(v['peak_mem_bytes'])} |")
            elif v:
                lines.append(f"| {side} | {str(v)[:120]} | | | |")
        if "ratio_vs_trl" in st:
            lines.append(f"| TRL / aha | **{st['ratio_vs_trl']:.2f}x** | {st['ratio_by_phase']['gen']:.2f}x | "
                         f"{st['ratio_by_phase']['update']:.2f}x | {st['peak_mem_ratio_vs_trl']:.2f}x |")
    presets = {p: r for p, r in s.get("presets", {}).items() if r.get("result", {}).get("steps")}
    if presets:
        lines += ["", "Presets (2 steps of `aha train`, random weights of the preset's architecture):", "",
                  "| preset | model | finetune | rows x new tokens | prompt tokens | step 1 | step 2 | peak memory | notes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p, rec in presets.items():
            r = rec["result"]
            times = [f"{x['step_time']:.1f} s" for x in r["steps"]] + ["-", "-"]
            mem = r["memory"]
            peak = gib(mem.get("peak_bytes")) + (f" ({gib(mem['peak_reserved_bytes'])} reserved)"
                                                  if mem.get("peak_reserved_bytes") else "")
            notes = list(r.get("notes", [])) + (["ran alongside " + ", ".join(rec["ran_with"])]
                                                 if rec.get("ran_with") else [])
            lines.append(f"| {p} | {r.get('arch') or r['model']} ({r['backend']}) | {r['finetune']} r{r['lora_r']} | "
                         f"{r['rows']} x {r['max_new_tokens']} | {r['prompt_tokens']['mean']:.0f} | {times[0]} | "
                         f"{times[1]} | {peak} | {'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def merge(paths: list[str]) -> dict[str, Any]:
    """Several calls' JSONs as one: a later call's section replaces an earlier one unless it was skipped."""
    merged: dict[str, Any] = {"check": {}, "sections": {}}
    for path in paths:
        res = json.loads(Path(path).read_text())
        merged["check"] = {**(merged["check"] or res["check"]), "rerun": res["check"].get("rerun")}  # the last call's
        for name, rec in flat_sections(res):
            old = dict(flat_sections(merged)).get(name)
            if old is None or not rec["status"].startswith("skipped"):
                if name.startswith("preset:"):
                    merged["sections"].setdefault("presets", {})[name.split(":", 1)[1]] = rec
                else:
                    merged["sections"][name] = rec
    return merged
