"""kill -9: a node process killed with SIGKILL comes back with its agents, their KV
state and the durable messages it had accepted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_agents import Node, eventually

from caxton.agents import AgentState
from caxton.sandbox.wasmtime_sandbox import WasmtimeSandbox

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from sandbox_fixtures import make_wasmtime_sandbox
    from test_agents import Node

    async def main():
        data_dir, wasm = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
        mode = sys.argv[4]
        sandbox = make_wasmtime_sandbox(data_dir)
        await sandbox.start()
        node = Node(data_dir, sandbox)
        if mode == "kv":
            await node.start()
            agent = await node.manager.deploy("counter", wasm)
            for _ in range(2):
                await node.client.ask("counter")
            await node.store.flush()
        else:
            await node.start(guarantee="at-least-once")
            agent = await node.manager.deploy("counter", wasm)
            await node.manager.suspend("counter")
            await node.store.flush()
            for _ in range(3):
                # at-least-once: send returns once the message is committed (FULL)
                await node.router.send(node.client.message("counter", performative="inform"))
        print(agent.id, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def run_and_kill(tmp_path: Path, wasm: bytes, mode: str) -> str:
    wasm_path = tmp_path / "counter.wasm"
    wasm_path.write_bytes(wasm)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), str(wasm_path),
         str(Path(__file__).parent), mode],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        agent_id = child.stdout.readline().strip()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert agent_id, "the child process failed before it was killed"
    return agent_id


@pytest.mark.slow
async def test_agents_and_kv_survive_sigkill(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    agent_id = run_and_kill(tmp_path, example_agents["counter"], "kv")
    node = Node(tmp_path, wasmtime_sandbox)
    await node.start()
    try:
        agent = node.manager.get("counter")
        assert agent.id == agent_id
        assert agent.state is AgentState.RUNNING
        assert (await node.client.ask("counter")).content == {"count": 3}
    finally:
        await node.stop()


@pytest.mark.slow
async def test_durable_messages_survive_sigkill(
    tmp_path: Path, wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    run_and_kill(tmp_path, example_agents["counter"], "durable")
    node = Node(tmp_path, wasmtime_sandbox)
    await node.start(guarantee="at-least-once")
    try:
        assert node.manager.get("counter").state is AgentState.SUSPENDED
        assert len(await node.store.pending()) == 3
        await node.manager.resume("counter")
        await eventually(lambda: node.manager.runtime("counter").kv.get(b"count") == b"3")
        # The counter's replies leave once its count is committed (output commit), then
        # are persisted, delivered to the client and acknowledged: the outbox empties.
        await eventually(lambda: len(node.client.inbox) == 3)
        for _ in range(100):
            if await node.store.pending() == []:
                break
            await asyncio.sleep(0.02)
        assert await node.store.pending() == []
    finally:
        await node.stop()
