"""A node's assembly and lifecycle: drivers in order, hooks, API, failure half-way."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web

from caxton import hookimpl
from caxton.drivers import NodeLoad, PlacementRequest
from caxton.errors import ConfigError, DriverNotFound, PluginError
from caxton.node import build_node
from caxton.partition.quorum import QuorumPolicy
from caxton.placement.strategies import LeastLoaded
from caxton.testing import HookRecorder, NodeFactory


@pytest.fixture
def factory(tmp_path: Path) -> NodeFactory:
    return NodeFactory(tmp_path)


async def get_json(address: tuple[str, int], path: str) -> tuple[int, Any]:
    host, port = address
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{host}:{port}{path}") as response,
    ):
        return response.status, await response.json()


async def test_node_serves_health_on_an_os_assigned_port(factory: NodeFactory) -> None:
    async with factory.node("n1") as node:
        assert node.state == "running"
        assert node.api_address is not None
        assert node.api_address[1] != 0
        assert await get_json(node.api_address, "/api/v1/health") == (200, {"status": "healthy"})
        status, ready = await get_json(node.api_address, "/ready")
        assert (status, ready["status"], ready["state"]) == (200, "ready", "running")
    assert node.state == "stopped"


async def test_lifecycle_hooks_in_order(factory: NodeFactory) -> None:
    recorder = factory.record()
    async with factory.node("n1") as node:
        assert recorder.getcall("caxton_node_started").node is node
    assert [n for n in recorder.names() if n.startswith("caxton_node_")] == [
        "caxton_node_starting",
        "caxton_node_started",
        "caxton_node_stopping",
        "caxton_node_stopped",
    ]
    assert recorder.getcall("caxton_node_stopped").node is node
    recorder.assert_called("caxton_configure", times=1, config=node.config)


async def test_drivers_selected_by_config_are_started_and_logged(
    factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="caxton.node")
    async with factory.node("n1", config={"plugins.placement": "round-robin"}) as node:
        assert node.host.selected == {
            "sandbox": "wasmtime",
            "placement": "round-robin",
            "partition_policy": "quorum",
        }
        assert type(node.placement).__name__ == "RoundRobin"
        assert node.context.services["placement"] is node.placement
    assert any(
        "plugins: partition_policy=quorum, placement=round-robin, sandbox=wasmtime" in m
        for m in caplog.messages
    )


async def test_several_nodes_in_one_process(factory: NodeFactory) -> None:
    async with factory.node() as one, factory.node() as two:
        assert one.node_id != two.node_id
        assert one.api_address != two.api_address
        assert one.data_dir != two.data_dir
        assert one.host is not two.host
        assert one.host.pm is not two.host.pm
        for node in (one, two):
            assert node.api_address is not None
            assert (await get_json(node.api_address, "/api/v1/health"))[0] == 200


async def test_plugin_routes_are_mounted(factory: NodeFactory) -> None:
    class Routes:
        @hookimpl
        def caxton_api_routes(self, node: Any) -> list[tuple[str, web.Application]]:
            app = web.Application()

            async def hello(request: web.Request) -> web.Response:
                return web.json_response({"node": node.node_id})

            app.router.add_get("/hello", hello)
            return [("/api/v1/plugins/greeter", app)]

    async with factory.node("greeter-node", plugins=[Routes()]) as node:
        assert node.api_address is not None
        assert await get_json(node.api_address, "/api/v1/plugins/greeter/hello") == (
            200,
            {"node": "greeter-node"},
        )


async def test_a_driver_implementing_hooks_receives_them(factory: NodeFactory) -> None:
    class Watching(LeastLoaded):
        started: ClassVar[list[str]] = []

        @hookimpl
        def caxton_node_started(self, node: Any) -> None:
            self.started.append(node.node_id)

    factory.register_driver("placement", "watching", Watching)
    async with factory.node("w1", config={"plugins.placement": "watching"}):
        assert Watching.started == ["w1"]


class Recording(LeastLoaded):
    """A placement strategy that records its lifecycle, for start-order checks."""

    events: ClassVar[list[str]] = []

    async def start(self) -> None:
        self.events.append("placement started")

    async def close(self) -> None:
        self.events.append("placement closed")


class FailingPolicy(QuorumPolicy):
    closed: ClassVar[int] = 0

    async def start(self) -> None:
        raise OSError("policy store unavailable")

    async def close(self) -> None:
        type(self).closed += 1


async def test_failure_half_way_closes_what_was_opened(factory: NodeFactory) -> None:
    Recording.events.clear()
    factory.register_driver("placement", "recording", Recording)
    factory.register_driver("partition_policy", "failing", FailingPolicy)
    node = factory.build(
        config={"plugins.placement": "recording", "plugins.partition_policy": "failing"}
    )
    recorder = HookRecorder(node.host)
    with pytest.raises(PluginError) as info:
        await node.start()
    assert str(info.value) == (
        "partition_policy driver 'failing' failed to start: OSError: policy store unavailable"
    )
    assert isinstance(info.value.__cause__, OSError)
    assert node.state == "failed"
    assert Recording.events == ["placement started", "placement closed"]
    assert FailingPolicy.closed == 1  # close() after a failed start releases what it got
    recorder.assert_not_called("caxton_node_started")


async def test_a_plugin_failing_in_a_lifecycle_hook_aborts_the_start(
    factory: NodeFactory,
) -> None:
    class Faulty:
        @hookimpl
        def caxton_node_started(self, node: Any) -> None:
            raise RuntimeError("cannot reach the audit sink")

    node = factory.build(plugins=[Faulty()])
    with pytest.raises(PluginError, match=r"failed in caxton_node_started: RuntimeError: cannot"):
        await node.start()
    assert node.state == "failed"
    assert node.api_address is not None
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_json(node.api_address, "/api/v1/health")  # the API was closed again


async def test_missing_driver_fails_before_anything_starts(factory: NodeFactory) -> None:
    factory.register_driver("placement", "recording", Recording)
    Recording.events.clear()
    node = factory.build(config={"plugins.placement": "recording", "plugins.transport": "quic"})
    with pytest.raises(DriverNotFound, match=r"transport driver 'quic' is not installed"):
        await node.start()
    assert node.state == "failed"
    assert Recording.events == []
    assert not node.data_dir.exists()


async def test_cluster_drivers_are_checked_only_when_clustering(factory: NodeFactory) -> None:
    alone = factory.build()
    assert alone.used_driver_kinds() == ["sandbox", "placement", "partition_policy"]
    seeded = factory.build(join=["127.0.0.1:7946"])
    assert seeded.used_driver_kinds() == [
        "sandbox",
        "placement",
        "partition_policy",
        "transport",
        "membership",
    ]
    secured = factory.build(config={"security.auth_enabled": True})
    assert "auth" in secured.used_driver_kinds()
    chosen = factory.build(config={"plugins.membership": "static"})
    assert chosen.used_driver_kinds()[-1] == "membership"


async def test_core_drivers_can_be_left_out(tmp_path: Path) -> None:
    node = NodeFactory(tmp_path, core_drivers=False).build()
    with pytest.raises(DriverNotFound) as info:
        await node.start()
    assert str(info.value) == (
        "sandbox driver 'wasmtime' is not installed (installed sandbox drivers: none); "
        "a plugin must publish it in the entry-point group 'caxton.sandbox'"
    )


async def test_api_on_a_public_address_needs_auth_or_an_opt_in(factory: NodeFactory) -> None:
    node = factory.build(config={"networking.bind_address": "0.0.0.0:0"})
    with pytest.raises(ConfigError, match=r"refusing to serve the API on 0.0.0.0 without auth"):
        await node.start()
    assert node.state == "failed"
    opted_in = {"networking.bind_address": "0.0.0.0:0", "security.allow_insecure_remote": True}
    async with factory.node(config=opted_in) as node:
        assert node.state == "running"


async def test_start_twice_and_stop_twice(factory: NodeFactory) -> None:
    async with factory.node() as node:
        with pytest.raises(RuntimeError, match="already running"):
            await node.start()
    await node.stop()  # already stopped: no-op
    assert node.state == "stopped"


async def test_run_until_stopped(factory: NodeFactory) -> None:
    node = factory.build()
    runner = asyncio.ensure_future(node.run_until_signal())
    while node.state != "running":
        await asyncio.sleep(0.01)
        assert not runner.done(), runner
    await node.stop()
    await asyncio.wait_for(runner, timeout=30)
    assert node.state == "stopped"


def test_limits_come_from_runtime_config(factory: NodeFactory) -> None:
    node = factory.build(
        config={
            "runtime.max_memory_per_agent": "10MB",
            "runtime.default_max_fuel": 5000,
            "runtime.default_execution_time": "250ms",
            "runtime.wasm_memory_limit": "1GB",
            "runtime.execution_timeout": "2s",
        }
    )
    defaults = node.default_limits()
    assert (defaults.max_memory_bytes, defaults.max_fuel, defaults.max_execution_time_ms) == (
        10 * 1024**2,
        5000,
        250,
    )
    ceiling = node.limit_ceiling()
    assert (ceiling.max_memory_bytes, ceiling.max_execution_time_ms) == (1024**3, 2000)


def test_build_node_from_a_file_and_plugin_options(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\nid = "file-node"\ndata_dir = "{tmp_path / "d"}"\n'
        '[coordination]\nseeds = ["10.0.0.1:7946"]\n'
    )
    node = build_node(path, plugin_options=["placement=local"], env={})
    assert node.node_id == "file-node"
    assert node.config["plugins"]["placement"] == "local"
    assert node.join_addresses == ["10.0.0.1:7946"]
    assert node.clustered
    with pytest.raises(PluginError, match="unknown plugin kind"):
        build_node(path, plugin_options=["storage=x"], env={})


def test_placement_filter_and_score_hooks_reach_every_plugin(factory: NodeFactory) -> None:
    class NoGpu:
        @hookimpl
        def caxton_placement_filter(
            self, request: PlacementRequest, candidates: Sequence[NodeLoad]
        ) -> list[str]:
            return [c.node_id for c in candidates if c.labels.get("gpu") != "true"]

    class PreferEu:
        @hookimpl
        def caxton_placement_score(self, request: PlacementRequest, candidate: NodeLoad) -> Any:
            return 1.0 if candidate.region == "eu-west" else None

    node = factory.build(plugins=[NoGpu(), PreferEu()])
    loads = [NodeLoad("a", labels={"gpu": "true"}, region="eu-west"), NodeLoad("b")]
    request = PlacementRequest("agent")
    assert node.hook.caxton_placement_filter(request=request, candidates=loads) == [["b"]]
    assert node.hook.caxton_placement_score(request=request, candidate=loads[0]) == [1.0]
    assert node.hook.caxton_placement_score(request=request, candidate=loads[1]) == []
