"""The scheduler of bench/gpu_check.py: each section of the check is a `Job` (a command in its own process
group, with a kind whose limits bound it), started in priority order within the check's time budget and
the card's memory, cut at its deadline (SIGINT first, so pytest reports the tests that ran), and its
outcome recorded. --simulate replaces the processes by `SimProc`s that end on a virtual clock.

`JobRunner` is the running half of `gpu_check.Check`, which gives it: `limits` (kind -> (timeout, least
time left to start)), `budget`, `sim` / `clock` / `t0` (the clock), `scratch`, `env`, `logfile`,
`running`, and the plan's `assumed(name)` (--simulate's seconds) and `record(name, rec)`.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Job:
    name: str  # "rollout", "preset:rtx5090", ...
    cmd: list[str] | Callable[[], list[str]]  # a callable is called at the start (after what it needs ran)
    kind: str  # a key of LIMITS
    parse: Callable[[Job], dict[str, Any]]  # the section's figures, read from its files
    env: dict[str, str] = field(default_factory=dict)
    gib: float = 0.0
    dest: Path = Path()
    proc: subprocess.Popen | None = None
    start: float = 0.0
    deadline: float = 0.0
    cut_by_budget: bool = False  # its deadline is the budget's end, not its own timeout
    log: Path = Path()
    with_: set[str] = field(default_factory=set)  # jobs that ran at the same time
    after: str = ""  # a job that must have ended before this one starts


class SimProc:
    """--simulate: a section's process that exits (0) once the check's virtual clock reaches its end."""

    def __init__(self, check: JobRunner, seconds: float):
        self.check, self.end, self.returncode = check, check.elapsed() + seconds, None

    def poll(self) -> int | None:
        if self.returncode is None and self.check.elapsed() >= self.end:
            self.returncode = 0
        return self.returncode


class JobRunner:
    """Starting, timing, cutting and recording a check's jobs (the attributes it reads: the module's
    docstring)."""

    def elapsed(self) -> float:
        """Seconds since the start (--simulate: on the virtual clock)."""
        return self.clock if self.sim else time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def say(self, text: str) -> None:
        line = f"[gpu_check {self.elapsed():6.1f}s] {text}"
        print(line, flush=True)
        self.logfile.write(line + "\n")
        self.logfile.flush()

    def run_jobs(self, jobs: list[Job], parallel: int = 1, cap_gib: float = math.inf, until: float = math.inf) -> None:
        """Start jobs in priority order, `parallel` at a time and within cap_gib of estimated GPU memory (the
        first pending job that fits and whose `after` job has ended goes next); each ends by itself or at
        the earliest of its timeout, the stage's end (`until`, in elapsed seconds) and the budget's end. A
        job with less than its least time left is skipped; either way the rerun line names it."""
        pending, running, done = list(jobs), self.running, set()
        while pending or running:
            for job in list(pending):
                if len(running) >= parallel:
                    break
                if job.after and job.after not in done and any(j.name == job.after for j in pending + running):
                    continue
                timeout, least = self.limits[job.kind]
                window = min(self.left(), until - self.elapsed())
                if window < max(least, 5):
                    pending.remove(job)
                    self.record(job.name, {"status": "skipped: time budget", "seconds": 0.0, "rerun": True})
                    continue
                if running and sum(j.gib for j in running) + job.gib > cap_gib:
                    continue
                job.cut_by_budget = window < timeout
                self.start(job, min(timeout, window))
                for other in running:
                    other.with_.add(job.name)
                    job.with_.add(other.name)
                pending.remove(job)
                running.append(job)
            for job in [j for j in running if j.proc.poll() is not None or self.elapsed() > j.deadline]:
                running.remove(job)
                self.finish(job)
                done.add(job.name)
            if self.sim:
                self.clock += 0.5
            else:
                time.sleep(0.2)

    def start(self, job: Job, timeout: float) -> None:
        job.dest = self.scratch / f"{job.name.replace(':', '-')}.json"
        job.log = self.scratch / f"{job.name.replace(':', '-')}.log"
        cmd = [c.replace("{dest}", str(job.dest)) for c in (job.cmd() if callable(job.cmd) else job.cmd)]
        self.say(f"start {job.name} (timeout {timeout:.0f}s): {shlex.join(cmd)}")
        job.start, job.deadline = self.elapsed(), self.elapsed() + timeout
        if self.sim:  # no process: the section ends after its assumed GPU time on the virtual clock
            job.log.write_text("")
            job.proc, job.parse = SimProc(self, self.assumed(job.name)), lambda j: {}
            return
        with open(job.log, "w") as log:  # its own process group: a timeout ends every process it started
            job.proc = subprocess.Popen(cmd, cwd=REPO, env={**self.env, **job.env}, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, job: Job) -> None:
        """SIGINT first (pytest then writes its report of the tests that ran), SIGTERM, then SIGKILL."""
        if isinstance(job.proc, SimProc):
            job.proc.returncode = -signal.SIGINT
            return
        for sig, wait in ((signal.SIGINT, 8), (signal.SIGTERM, 5), (signal.SIGKILL, None)):
            try:
                os.killpg(job.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                job.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def finish(self, job: Job, interrupted: bool = False) -> None:
        timed_out = job.proc.poll() is None
        if timed_out:
            self.stop(job)
        seconds = self.elapsed() - job.start
        text = job.log.read_text(errors="replace")
        self.logfile.write(f"\n===== {job.name}: exit {job.proc.returncode}, {seconds:.1f}s =====\n{text[-400_000:]}\n")
        rec: dict[str, Any] = {"status": "ok", "seconds": round(seconds, 1)}
        if job.with_:
            rec["ran_with"] = sorted(job.with_)
        try:
            rec["result"] = job.parse(job)
        except Exception as e:  # a section that wrote nothing: its log says why
            if job.proc.returncode == 0:
                rec["status"] = f"failed: could not read its output ({type(e).__name__}: {e})"
        if timed_out:
            cut = interrupted or job.cut_by_budget
            rec["status"] = f"timeout after {seconds:.0f}s" + (" (cut: the check was stopped)" if interrupted else
                                                               " (cut: its stage's or the budget's end)" if cut else "")
            rec["rerun"] = cut
        elif job.proc.returncode != 0:
            rec["status"] = f"failed (exit {job.proc.returncode})"
        elif rec.get("result", {}).get("failed"):
            rec["status"] = f"failed: {rec['result']['failed']}"
        if rec["status"] != "ok":
            rec["log_tail"] = text[-4000:]
        self.record(job.name, rec)

    def abort(self) -> None:
        """The check itself was stopped (SIGTERM, Ctrl-C): what runs is cut and recorded, the files written."""
        for job in list(self.running):
            self.running.remove(job)
            self.finish(job, interrupted=True)
