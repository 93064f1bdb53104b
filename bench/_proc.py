"""Reading a running process tree from /proc, for the benchmarks that run datagen as a subprocess."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from pathlib import Path


def _pss(pid: int) -> int:
    """Proportional set size: resident bytes, each page shared with other processes divided among them."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_rss(pid: int, with_pss: bool = True) -> tuple[int, int, int]:
    """Memory of ``pid`` and all its descendants, from /proc: (sum of RSS, largest process's RSS, sum of
    PSS, or 0 without ``with_pss``). The RSS sum counts a page that forked processes share once per
    process; the PSS sum counts it once, which is what the tree really holds. PSS is dear to read
    (the kernel walks every mapping: about 5 ms for a 300 MB process, RSS about 0.02 ms)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(p))
            rss[int(p)] = int(parts[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    total, largest, pss, todo = 0, 0, 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        largest = max(largest, rss.get(p, 0))
        try:
            pss += _pss(p) if with_pss else 0
        except OSError:  # gone meanwhile
            pass
        todo += children.get(p, [])
    return total, largest, pss


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a running process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def measure(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Wall time, children's CPU time and the process tree's peak memory (RSS sum, largest process, PSS sum)
    of one command, and when it started (``started``, ``time.time()``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()  # the clock other processes' timestamps use (bench_download's server)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    peak = largest = peak_pss = 0

    def sample() -> None:
        # RSS every 0.1 s; PSS every 0.5 s, and at a new RSS peak at most every 0.2 s: read every 0.1 s,
        # PSS cost the measured tools about 17% of a core (15-17 ms of CPU a sample on a 5-process tree)
        nonlocal peak, largest, peak_pss
        last_pss = 0.0
        while proc.poll() is None:
            total, one, _ = tree_rss(proc.pid, with_pss=False)
            since = time.perf_counter() - last_pss
            if since >= 0.5 or (total > peak and since >= 0.2):
                peak_pss = max(peak_pss, tree_rss(proc.pid)[2])
                last_pss = time.perf_counter()
            peak, largest = max(peak, total), max(largest, one)
            time.sleep(0.1)

    th = threading.Thread(target=sample)
    th.start()
    out, _ = proc.communicate()
    th.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"started": started, "wall_s": wall, "cpu_s": cpu, "peak_rss": peak, "largest_rss": largest, "peak_pss": peak_pss, "log": out.decode(errors="replace")}
