"""Runs every benchmark in turn with its default (small, bounded) settings: `make bench`.

Each script starts what it measures on loopback (its own daemon or worker in a temp data dir) and
stops it; figures and the commands for larger runs are in bench/README.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["bench_search.py"],
    ["bench_turns.py"],
    ["bench_streams.py", "--streams", "1000"],
    ["bench_tasks.py"],
    ["bench_idle.py", "--seconds", "60"],
    # The load target: 200 streaming sessions at 50 messages/s (figures in bench/README.md).
    ["bench_load.py", "--workers", "1", "--sessions", "200", "--messages", "6", "--workload", "reply"],
    ["bench_load.py", "--workers", "2", "--sessions", "200", "--messages", "6", "--workload", "tool"],
    ["bench_load.py", "--workers", "4", "--sessions", "200", "--messages", "6", "--workload", "tool"],
]


def main() -> int:
    failed = []
    for script, *args in BENCHES:
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args], cwd=HERE.parent).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
