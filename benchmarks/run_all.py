#!/usr/bin/env python3
"""Every benchmark in one command: ``python3 benchmarks/run_all.py [--quick] [--only NAME]``.

Runs each ``bench_*.py`` of this directory in its own process, one after the other (the
figures of docs/performance.md come from this command), and writes every result to
``benchmarks/results/NAME.json``. With ``--wasmer-python PY`` (an interpreter where
``caxton-sandbox-wasmer`` is installed; wasmer 1.1 needs CPython 3.10) the sandbox and
agents benchmarks also run with ``sandbox=wasmer`` beside ``sandbox=wasmtime`` in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: name -> (script, how the script takes its JSON output path, extra args, quick args)
BENCHMARKS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "sandbox-wasmtime": (
        "bench_sandbox.py",
        "--json",
        ["--sandbox", "wasmtime"],
        ["--messages", "2000", "--instantiations", "200", "--instances", "200"],
    ),
    "router": ("bench_router.py", "--output", [], ["--messages", "20000"]),
    "agents": ("bench_agents.py", "--json", [], ["--quick"]),
    "transport": ("bench_transport.py", "--json", [], ["--quick"]),
    "membership": ("bench_membership.py", "--out", [], ["--quick"]),
    "cluster": ("bench_cluster.py", "--out", [], ["--quick"]),
    "isolation": ("bench_isolation.py", "--json", [], ["--quick"]),
    "backup": ("bench_backup.py", "--out", [], ["--quick"]),
    "durability": ("bench_durability.py", "--out", [], ["--quick"]),
    "lease": ("bench_lease.py", "--out", [], ["--quick"]),
    "moves": ("bench_moves.py", "--out", [], ["--quick"]),
}


#: With --wasmer-python: result name -> (benchmark whose script runs, its arguments).
SIDE_BY_SIDE = {
    "sandbox-wasmtime-vs-wasmer": ("sandbox-wasmtime", ["--sandbox", "wasmtime,wasmer"]),
    "agents-wasmtime-vs-wasmer": ("agents", ["--sandbox", "wasmtime,wasmer"]),
}


def run(name: str, python: str, quick: bool, extra: list[str] | None = None) -> bool:
    bench, extra = SIDE_BY_SIDE.get(name, (name, extra))
    script, flag, args, quick_args = BENCHMARKS[bench]
    if extra is not None:
        args = extra
    out = RESULTS / f"{name}.json"
    command = [python, str(HERE / script), *args, *(quick_args if quick else []), flag, str(out)]
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, stdout=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        print(f"== {name}: FAILED (exit {result.returncode}) after {elapsed:.0f}s", flush=True)
        return False
    print(f"== {name}: {elapsed:.0f}s -> {out.relative_to(HERE.parent)}", flush=True)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    parser.add_argument("--only", action="append", choices=[*BENCHMARKS, *SIDE_BY_SIDE])
    parser.add_argument("--wasmer-python", help="interpreter with caxton-sandbox-wasmer")
    options = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    names = options.only or list(BENCHMARKS)
    failed = [
        name
        for name in names
        if name not in SIDE_BY_SIDE and not run(name, sys.executable, options.quick)
    ]
    if options.wasmer_python:
        for name in SIDE_BY_SIDE:
            if (not options.only or name in options.only) and not run(
                name, options.wasmer_python, options.quick
            ):
                failed.append(name)
    summary = {
        path.stem: json.loads(path.read_text())
        for path in sorted(RESULTS.glob("*.json"))
        if path.stem != "summary"
    }
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
