"""An agent's key/value state over REST on one node: what is refused and why (the
scenarios through each client and through another node are in test_client.py and
tests/cluster/test_agents_anywhere.py), and the wait for a change to be durable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from caxton.testing import NodeFactory


async def test_what_the_state_routes_refuse(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    async with NodeFactory(tmp_path).node("s1") as node:
        agent = await node.agents.deploy("echo", example_agents["echo"])
        node.agents.kv_max_value_bytes = 8
        host, port = node.api_address
        base = f"http://{host}:{port}/api/v1/agents/{agent.id}/state"
        async with aiohttp.ClientSession() as http:

            async def status(method: str, url: str, **kwargs: object) -> tuple[int, str]:
                async with http.request(method, url, **kwargs) as answer:  # type: ignore[arg-type]
                    body = await answer.json() if answer.status != 204 else {}
                    return answer.status, str(body.get("details", ""))

            assert (await status("PUT", f"{base}/k", json={"value": "12345678"}))[0] == 200
            code, details = await status("PUT", f"{base}/k", json={"value": "123456789"})
            assert (code, "a value 8; this key has 1 and the value 9" in details) == (413, True), (
                details
            )
            code, details = await status("PUT", f"{base}/k", json={})
            assert code == 400, details
            code, details = await status(
                "PUT", f"{base}/k", json={"value": "a", "value_base64": "YQ=="}
            )
            assert code == 400, details
            code, details = await status("GET", f"{base}/{'k' * 1025}")
            assert (code, "1 to 1024 bytes" in details) == (400, True), details
            code, details = await status("GET", f"{base}/@@?encoding=base64")
            assert (code, "base64" in details) == (400, True), details
            code, details = await status("GET", f"{base}/nope")
            assert (code, "has no key 'nope'" in details) == (404, True), details
            missing = base.replace(agent.id, "00000000-0000-0000-0000-000000000000")
            assert (await status("GET", missing))[0] == 404
            assert (await status("GET", f"{base}?after=not*base64"))[0] == 400

            # A copy that lost its ownership accepts no change.
            node.agents.runtime("echo").fenced = "a newer owner took over"
            code, details = await status("DELETE", f"{base}/k")
            assert (code, "lost its ownership" in details) == (409, True), details


async def test_a_change_waits_until_it_is_durable(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    """durable() resolves once the change is committed, and fails when it never will be."""
    async with NodeFactory(tmp_path).node("s2") as node:
        await node.agents.deploy("echo", example_agents["echo"])
        runtime = node.agents.runtime("echo")
        outputs = node.agents.outputs
        runtime.kv_store(b"a", b"1")
        waiting = outputs.durable(runtime)
        assert not waiting.done()
        await asyncio.wait_for(waiting, 10)  # the group commit at the end of the turn
        assert runtime.committed == runtime.version
        assert outputs.durable(runtime).done()  # nothing pending: at once

        runtime.version += 1  # a change no commit will acknowledge
        doomed = outputs.durable(runtime)
        outputs.failed(runtime, "the disk is gone")
        with pytest.raises(Exception, match="not durable: the disk is gone"):
            await doomed


async def test_an_operators_change_while_the_agents_call_runs_on_a_worker(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    """While a heavy agent's call runs on a worker thread (fair share), its own kv_store
    is handed to the event loop; an operator's change, already on the loop, is carried
    out at once instead of waiting for itself."""
    async with NodeFactory(tmp_path).node("s3") as node:
        agent = await node.agents.deploy("echo", example_agents["echo"])
        runtime = node.agents.runtime("echo")
        runtime.off_loop = runtime.instance  # as while a call runs on a worker
        host, port = node.api_address
        url = f"http://{host}:{port}/api/v1/agents/{agent.id}/state/k"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.put(url, json={"value": "v"}) as answer:
                    assert answer.status == 200, await answer.text()
                async with http.delete(url) as answer:
                    assert answer.status == 204, await answer.text()
        finally:
            runtime.off_loop = None
        assert runtime.kv == {}
