#!/usr/bin/env python3
"""Run benchmarks/bench_agents.py with the wasmer sandbox (CPython 3.10).

``python3.10 plugins/caxton-sandbox-wasmer/benchmarks/bench_agents_wasmer.py [ARGS]``
takes bench_agents.py's arguments. bench_agents.py builds its node core with core's
``WasmtimeSandbox``; until it takes a ``--sandbox`` option, this runs it with that name
bound to :class:`WasmerSandbox` (the benchmark imports it when the node starts). Results
go to ``--json`` (default benchmarks/results/agents-wasmer.json).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import caxton.sandbox.wasmtime_sandbox as wasmtime_sandbox
from caxton_sandbox_wasmer.driver import WasmerSandbox

ROOT = Path(__file__).resolve().parents[3]

if __name__ == "__main__":
    wasmtime_sandbox.WasmtimeSandbox = WasmerSandbox  # type: ignore[misc]
    if "--json" not in sys.argv:
        sys.argv += ["--json", str(ROOT / "benchmarks" / "results" / "agents-wasmer.json")]
    sys.argv[0] = str(ROOT / "benchmarks" / "bench_agents.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
