"""Logs: JSON lines with the node, agent, conversation and trace fields (the access
log's fields as fields, not JSON in ``message``); rotation by size and age with
retention; each agent's own lines on its node, over REST (also followed) and with
``caxton logs``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
from click.testing import CliRunner

from caxton.agents.agent_logs import RING_LINES
from caxton.agents.runtime import AGENT_LOG_BURST
from caxton.cli.main import make_cli
from caxton.logs import JsonFormatter, RotatingLogFile
from caxton.messaging import Message, Performative
from caxton.testing import NodeFactory


def record(message: str, **extra: Any) -> logging.LogRecord:
    entry = logging.LogRecord("caxton.api.access", logging.INFO, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    return entry


def test_json_lines_carry_the_known_fields_once() -> None:
    access = {"method": "GET", "path": "/health", "status": 200, "duration_ms": 0.4}
    line = JsonFormatter(node_id="n1").format(
        record(
            "GET /health 200 0.4 ms",
            access=access,
            request_id="r1",
            agent="echo",
            conversation_id="c1",
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
    )
    entry = json.loads(line)
    assert entry["message"] == "GET /health 200 0.4 ms"
    assert entry["node_id"] == "n1"
    assert (entry["agent"], entry["conversation_id"], entry["request_id"]) == ("echo", "c1", "r1")
    assert entry["status"] == 200
    assert entry["path"] == "/health"
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert entry["span_id"] == "b7ad6b7169203331"


def test_the_log_file_rotates_by_size_and_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "node.log"
    handler = RotatingLogFile(path, max_bytes=200, backups=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(20):
        handler.emit(record(f"line {i:02d} " + "x" * 40))
    handler.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["node.log", "node.log.1", "node.log.2"]
    assert all(p.stat().st_size <= 200 for p in path.parent.iterdir())
    assert "line 19" in path.read_text()


def test_the_log_file_rotates_by_age_and_drops_old_backups(tmp_path: Path) -> None:
    now = [1_000_000.0]
    path = tmp_path / "node.log"
    stale = tmp_path / "node.log.3"
    stale.write_text("old\n")
    os.utime(stale, (now[0] - 40 * 86_400, now[0] - 40 * 86_400))
    handler = RotatingLogFile(
        path, interval=86_400, backups=5, retention=30 * 86_400, clock=lambda: now[0]
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(record("monday"))
    now[0] += 86_400
    handler.emit(record("tuesday"))
    handler.close()
    assert path.read_text() == "tuesday\n"
    assert (tmp_path / "node.log.1").read_text() == "monday\n"
    assert not stale.exists()  # older than the retention


async def test_an_agents_log_lines_are_kept_and_served(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    async with NodeFactory(tmp_path).node("l1") as node:
        agent = await node.agents.deploy("flood", example_agents["log_flood"])
        node.router.register("client", lambda message: None)
        base = f"http://{node.api_address[0]}:{node.api_address[1]}"
        path = f"/api/v1/agents/{agent.id}/logs"
        async with aiohttp.ClientSession(base) as session:
            follow = await session.get(path, params={"follow": "true", "interval": "0.05"})
            assert follow.headers["Content-Type"].startswith("application/x-ndjson")
            await node.router.send(
                Message(Performative.INFORM, sender="client", receiver="flood", content=1)
            )
            first = json.loads(await asyncio.wait_for(follow.content.readline(), 10))
            follow.close()
            async with session.get(path) as response:
                assert response.status == 200
                lines = (await response.json())["lines"]
            # Past the documented maximum as well as not a number (schemathesis found it).
            for since in ("x", "999999999999999.1", "nan", ""):
                async with session.get(path, params={"since": since}) as response:
                    assert response.status == 400, since
            # A parameter given twice, or empty, is not silently read as one or the default.
            for bad in ("after=&since=1", "since=1&since=2", "after=1&after=2"):
                async with session.get(f"{path}?{bad}") as response:
                    assert response.status == 400, bad
                    assert "error" in await response.json()
        assert first["agent"] == "flood"
        # The agent's log budget let the first burst through, then counted the rest;
        # the ring holds at most 1,000 lines.
        assert AGENT_LOG_BURST <= len(lines) <= RING_LINES
        assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
        runner = CliRunner()
        result = await asyncio.to_thread(
            runner.invoke, make_cli(), ["logs", "flood", "--json", "--api-url", base]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["lines"][-1]["seq"] == lines[-1]["seq"]
        result = await asyncio.to_thread(
            runner.invoke, make_cli(), ["logs", "flood", "--since", "1h", "--api-url", base]
        )
        assert result.exit_code == 0, result.output
        assert len(result.output.splitlines()) == len(lines)
