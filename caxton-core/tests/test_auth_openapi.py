"""schemathesis with auth enabled: no route answers a caller without the right role.

A live node with ``security.auth_enabled``; schemathesis (``st run``, its own process)
generates requests for every operation of ``/api/v1/openapi.json``, once with no
credentials and once with a ``viewer`` key. The server's own access log says, for each
request, the permission of the route it matched, the identity and the status it
answered: every request to a route the caller may not use must have been answered 401
(no or mangled credentials: schemathesis also drops the header on purpose) or 403 (the
viewer), never anything else.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from caxton.api import PUBLIC
from caxton.auth.keys import ApiKeyStore
from caxton.auth.rbac import DEFAULT_ROLES
from caxton.node import Node
from caxton.testing import NodeFactory

pytest.importorskip("schemathesis", reason="schemathesis is in caxton-core's test extra")

MAX_EXAMPLES = 3
MIN_REQUESTS = 200


async def schemathesis(node: Node, tmp_path: Path, headers: list[str]) -> str:
    assert node.api_address is not None
    host, port = node.api_address
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from schemathesis.cli import schemathesis; schemathesis(prog_name='st')",
        "run",
        f"http://{host}:{port}/api/v1/openapi.json",
        "--phases=examples,coverage,fuzzing",
        "--checks=not_a_server_error",
        f"--max-examples={MAX_EXAMPLES}",
        "--workers=1",
        "--request-timeout=30",
        "--seed=8",
        *(f"--header={header}" for header in headers),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    return output.decode(errors="replace")


@pytest.mark.parametrize("role", [None, "viewer"])
async def test_no_route_is_reachable_without_the_right_role(
    caxton_node_factory: NodeFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    role: str | None,
) -> None:
    config = {"security.auth_enabled": True, "security.audit.enabled": False}
    with caplog.at_level(logging.INFO, logger="caxton.api.access"):
        async with caxton_node_factory.node(config=config) as node:
            headers, key = [], ""
            if role is not None:
                keys = ApiKeyStore(node.store)
                await keys.setup()
                key, _ = await keys.create(role)
                headers.append(f"X-API-Key: {key}")
            text = await schemathesis(node, tmp_path, headers)
    entries = [r.__dict__["access"] for r in caplog.records if r.name == "caxton.api.access"]
    granted = DEFAULT_ROLES[role] if role is not None else frozenset()
    guarded = [e for e in entries if e["permission"] not in {PUBLIC, *granted}]
    leaks = [
        (e["method"], e["path"], e["permission"], e["status"])
        for e in guarded
        if e["status"] not in (401, 403)
    ]
    forbidden = [e for e in guarded if e["status"] == 403]
    summary = (
        f"role {role}: {len(entries)} requests, {len(guarded)} to routes it may not use, "
        f"{len(forbidden)} of them 403, {len(leaks)} answered otherwise"
    )
    print(summary)
    assert leaks == [], f"{summary}: {leaks[:10]}\n{text[-3000:]}"
    assert len(entries) >= MIN_REQUESTS, f"{summary}\n{text[-3000:]}"
    assert {e["permission"] for e in guarded} >= ({"deploy", "remove", "cluster", "audit"}), summary
    assert not [e for e in entries if e["status"] >= 500], summary
    if role is None:
        assert forbidden == [], summary
        assert all(e["identity"] is None for e in guarded), summary
    else:
        assert len(forbidden) >= len(guarded) // 2, summary
        assert {e["identity"] for e in forbidden} == {f"key:{key.split('_')[1]}"}, summary
        # The viewer did reach what it may use.
        assert any(e["status"] == 200 and e["permission"] == "read" for e in entries), summary
