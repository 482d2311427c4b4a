"""Idle CPU of the whole embedded daemon, per process and per thread.

    .venv/bin/python bench/bench_idle.py [--seconds 60] [--workers 1] [--settle 10]

Starts a real daemon (``digitorn start --workers N``, its Celery worker with the scheduler inside)
in a fresh data dir on the embedded default, deploys the peers-bench app, lets it settle, then
reads the CPU time (utime + stime from ``/proc``) of every process of the daemon's tree and of each
of their threads over ``--seconds`` with no client connected. Reported in % of one core: what a
daemon left running on a laptop costs while nobody talks to it (the scheduler's ticks, the broker's
polling, the event pollers, the supervisor's loop). Issue 14's target for 1,000 idle streams is
< 5 % CPU; this is the floor under it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_memory import label, proc_tree  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(path: Path) -> int:
    """utime + stime of a process or a thread (its /proc/.../stat)."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def snapshot(pids: list[int]) -> dict[tuple[int, int], tuple[int, str]]:
    """(pid, tid) → (CPU ticks, thread name); tid 0 is the whole process."""
    out: dict[tuple[int, int], tuple[int, str]] = {}
    for pid in pids:
        base = Path(f"/proc/{pid}")
        try:
            out[(pid, 0)] = (cpu_ticks(base / "stat"), "")
            for task in (base / "task").iterdir():
                name = (task / "comm").read_text().strip()
                out[(pid, int(task.name))] = (cpu_ticks(task / "stat"), name)
        except OSError:
            continue
    return out


def measure(supervisor: int, seconds: float) -> float:
    pids = proc_tree(supervisor)
    labels = {}
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        labels[pid] = label(cmd)
    before = snapshot(pids)
    t0 = time.monotonic()
    time.sleep(seconds)
    after = snapshot(pids)
    wall = time.monotonic() - t0

    def pct(key: tuple[int, int]) -> float:
        if key not in before or key not in after:
            return 0.0
        return 100.0 * (after[key][0] - before[key][0]) / TICK / wall

    print(f"\nidle CPU over {wall:.0f} s, % of one core (clock tick 1/{TICK} s)")
    print("| process | pid | CPU % | busiest threads (CPU %) |\n|---|---|---|---|")
    total = 0.0
    for pid in pids:
        share = pct((pid, 0))
        total += share
        threads = sorted(
            ((pct(key), after[key][1]) for key in after if key[0] == pid and key[1]),
            reverse=True,
        )
        busy = ", ".join(f"{name} {value:.2f}" for value, name in threads[:4] if value > 0)
        print(f"| {labels.get(pid, pid)} | {pid} | {share:.2f} | {busy or '-'} |")
    print(f"| **total** ({len(pids)} processes) | | **{total:.2f}** | |")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between start and measuring")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the daemon (repeatable)")
    args = parser.parse_args()

    from tests.conftest import AppYaml, start_daemon

    env = dict(item.split("=", 1) for item in args.env)
    root = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    daemon = start_daemon(root / "data", workers=args.workers, celery_workers=1, env=env)
    try:
        apps = AppYaml(root / "apps")
        (apps.workspace / "alpha.py").write_text("print('alpha')\n")
        rules = [{"steps": [{"call": "filesystem.find", "params": {"pattern": "*.py", "path": "."}},
                            {"say": "list_files FINAL: {result}"}]}]
        daemon.deploy(apps.minimal("bench", rules=rules), force=True)
        supervisor = json.loads((root / "data" / "daemon.json").read_text())["pid"]
        time.sleep(args.settle)
        with open("/proc/loadavg") as fh:
            print(f"load average before: {' '.join(fh.read().split()[:3])}")
        total = measure(supervisor, args.seconds)
        with open("/proc/loadavg") as fh:
            print(f"load average after: {' '.join(fh.read().split()[:3])}")
        print(f"\nidle CPU of the daemon: {total:.2f} % of one core")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
