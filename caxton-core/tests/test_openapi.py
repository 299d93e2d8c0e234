"""schemathesis against a live node: every phase, >= 1,000 cases, no 5xx, no drift.

The node runs in this process with a real socket; schemathesis runs as its own process
(``st run``) against ``/api/v1/openapi.json`` with every check but
``positive_data_acceptance``: a schema cannot say which base64 strings are valid
WebAssembly or which agent names exist, so valid-looking data is rightly refused. The
server side counts the statuses it answered from its own access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from caxton.testing import NodeFactory

pytest.importorskip("schemathesis", reason="schemathesis is in caxton-core's test extra")

#: Examples per operation and phase; about 40 per operation across phases in practice.
MAX_EXAMPLES = 60
MIN_CASES = 1000


def seed_option() -> list[str]:
    """``CAXTON_SCHEMATHESIS_SEED=N`` replays the seed a failing run printed."""
    seed = os.environ.get("CAXTON_SCHEMATHESIS_SEED")
    return [f"--seed={seed}"] if seed else []


async def test_schemathesis_all_phases(
    caxton_node_factory: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    report = tmp_path / "report.json"
    with caplog.at_level(logging.INFO, logger="caxton.api.access"):
        async with caxton_node_factory.node() as node:
            assert node.api_address is not None
            host, port = node.api_address
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from schemathesis.cli import schemathesis; schemathesis(prog_name='st')",
                "run",
                f"http://{host}:{port}/api/v1/openapi.json",
                "--phases=examples,coverage,fuzzing,stateful",
                "--checks=all",
                "--exclude-checks=positive_data_acceptance",
                f"--max-examples={MAX_EXAMPLES}",
                "--workers=1",
                "--request-timeout=30",
                "--report=json",
                *seed_option(),
                f"--report-json-path={report}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=tmp_path,  # schemathesis keeps its cache in the working directory
            )
            output, _ = await process.communicate()
    text = output.decode(errors="replace")
    result = json.loads(report.read_text())
    accesses = [r.__dict__["access"] for r in caplog.records if r.name == "caxton.api.access"]
    statuses = [a["status"] for a in accesses]
    server_errors = [s for s in statuses if s >= 500]
    failed_requests = [
        f"{a['method']} {a['path']} -> {a['status']}" for a in accesses if a["status"] >= 500
    ]
    server_logs = [
        r.getMessage() + ("\n" + r.exc_text if r.exc_text else "")
        for r in caplog.records
        if r.levelno >= logging.ERROR
    ]
    cases = result["test_cases"]["generated"]
    summary = (
        f"schemathesis: {cases} cases, {len(statuses)} requests, "
        f"{len(server_errors)} 5xx, seed {result['seed']}"
    )
    print(summary)
    assert server_errors == [], "\n".join([summary, *failed_requests, *server_logs])
    assert result["failures"] == [], text[-6000:]
    assert result["errors"] == [], text[-6000:]
    assert result["operations"]["tested"] == result["operations"]["total"]
    assert all(p["status"] == "success" for p in result["phases"].values()), result["phases"]
    assert cases >= MIN_CASES, summary
    assert process.returncode == 0, text[-6000:]
