"""``caxton.client`` (sync and async) and the ``caxton`` CLI pass the same tests against a
real node's REST API: one scenario, three ways to drive it."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from caxton.auth.keys import ApiKeyStore
from caxton.cli.main import make_cli
from caxton.client import ApiError, AsyncClient, Client, ConnectionProblem
from caxton.node import Node
from caxton.plugins import PluginHost
from caxton.testing import NodeFactory


def url_of(node: Node, scheme: str = "http") -> str:
    assert node.api_address is not None
    host, port = node.api_address
    return f"{scheme}://{host}:{port}"


class Driver:
    """One way to drive the API; every method is a coroutine so the node's loop runs."""

    def __init__(self, url: str, key: str | None, tmp_path: Path) -> None:
        self.url = url
        self.key = key
        self.tmp_path = tmp_path

    async def deploy(self, name: str, wasm: bytes) -> dict[str, Any]:
        raise NotImplementedError

    async def get(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    async def act(self, action: str, name: str) -> dict[str, Any]:
        raise NotImplementedError

    async def ask(self, name: str, content: str) -> Any:
        raise NotImplementedError

    async def names(self) -> list[str]:
        raise NotImplementedError

    async def remove(self, name: str) -> None:
        raise NotImplementedError

    async def state_keys(self, name: str) -> list[str]:
        raise NotImplementedError

    async def get_state(self, name: str, key: str) -> str:
        raise NotImplementedError

    async def set_state(self, name: str, key: str, value: str) -> dict[str, Any]:
        raise NotImplementedError

    async def delete_state(self, name: str, key: str) -> None:
        raise NotImplementedError


class SyncDriver(Driver):
    def client(self) -> Client:
        return Client(self.url, api_key=self.key)

    async def call(self, work: Callable[[Client], Any]) -> Any:
        def run() -> Any:
            with self.client() as client:
                return work(client)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def deploy(self, name: str, wasm: bytes) -> dict[str, Any]:
        return dict(await self.call(lambda c: c.deploy_agent(name, wasm)))

    async def get(self, name: str) -> dict[str, Any]:
        return dict(await self.call(lambda c: c.agent(name)))

    async def act(self, action: str, name: str) -> dict[str, Any]:
        return dict(await self.call(lambda c: getattr(c, f"{action}_agent")(c.agent(name)["id"])))

    async def ask(self, name: str, content: str) -> Any:
        answer = await self.call(lambda c: c.send_message(name, content, wait=5))
        return answer["reply"]["content"]

    async def names(self) -> list[str]:
        return [a["name"] for a in await self.call(lambda c: c.list_agents(cluster=True))]

    async def remove(self, name: str) -> None:
        await self.call(lambda c: c.remove_agent(c.agent(name)["id"]))

    async def state_keys(self, name: str) -> list[str]:
        answer = await self.call(lambda c: c.agent_state(c.agent(name)["id"]))
        return [e["key"] for e in answer["entries"]]

    async def get_state(self, name: str, key: str) -> str:
        return str(
            (await self.call(lambda c: c.get_agent_state(c.agent(name)["id"], key)))["value"]
        )

    async def set_state(self, name: str, key: str, value: str) -> dict[str, Any]:
        return dict(await self.call(lambda c: c.set_agent_state(c.agent(name)["id"], key, value)))

    async def delete_state(self, name: str, key: str) -> None:
        await self.call(lambda c: c.delete_agent_state(c.agent(name)["id"], key))


class AsyncDriver(Driver):
    def client(self) -> AsyncClient:
        return AsyncClient(self.url, api_key=self.key)

    async def deploy(self, name: str, wasm: bytes) -> dict[str, Any]:
        async with self.client() as client:
            return dict(await client.deploy_agent(name, wasm))

    async def get(self, name: str) -> dict[str, Any]:
        async with self.client() as client:
            return dict(await client.agent(name))

    async def act(self, action: str, name: str) -> dict[str, Any]:
        async with self.client() as client:
            agent = await client.agent(name)
            return dict(await getattr(client, f"{action}_agent")(agent["id"]))

    async def ask(self, name: str, content: str) -> Any:
        async with self.client() as client:
            return (await client.send_message(name, content, wait=5))["reply"]["content"]

    async def names(self) -> list[str]:
        async with self.client() as client:
            return [a["name"] for a in await client.list_agents(cluster=True)]

    async def remove(self, name: str) -> None:
        async with self.client() as client:
            await client.remove_agent((await client.agent(name))["id"])

    async def state_keys(self, name: str) -> list[str]:
        async with self.client() as client:
            answer = await client.agent_state((await client.agent(name))["id"])
            return [e["key"] for e in answer["entries"]]

    async def get_state(self, name: str, key: str) -> str:
        async with self.client() as client:
            return str(
                (await client.get_agent_state((await client.agent(name))["id"], key))["value"]
            )

    async def set_state(self, name: str, key: str, value: str) -> dict[str, Any]:
        async with self.client() as client:
            return dict(await client.set_agent_state((await client.agent(name))["id"], key, value))

    async def delete_state(self, name: str, key: str) -> None:
        async with self.client() as client:
            await client.delete_agent_state((await client.agent(name))["id"], key)


class CliDriver(Driver):
    """``caxton ...`` in-process; ApiError carries the exit status as its status."""

    async def run(self, *args: str) -> Any:
        env = {"CAXTON_API_URL": self.url, **({"CAXTON_API_KEY": self.key} if self.key else {})}

        def invoke() -> Any:
            return CliRunner().invoke(make_cli(PluginHost()), [*args, "--json"], env=env)

        result = await asyncio.get_running_loop().run_in_executor(None, invoke)
        if result.exit_code != 0:
            raise ApiError(
                {3: 404, 1: 400}.get(result.exit_code, 500), "cli", result.stderr.strip()
            )
        return json.loads(result.stdout)

    async def deploy(self, name: str, wasm: bytes) -> dict[str, Any]:
        path = self.tmp_path / f"{name}.wasm"
        path.write_bytes(wasm)
        return dict(await self.run("deploy", str(path)))

    async def get(self, name: str) -> dict[str, Any]:
        return dict(await self.run("agent", "get", name))

    async def act(self, action: str, name: str) -> dict[str, Any]:
        return dict(await self.run("agent", action, name))

    async def ask(self, name: str, content: str) -> Any:
        answer = await self.run("message", "send", "--to", name, "--content", content,
                                "--wait", "5s")  # fmt: skip
        return answer["reply"]["content"]

    async def names(self) -> list[str]:
        return [a["name"] for a in await self.run("agents", "list", "--cluster")]

    async def remove(self, name: str) -> None:
        await self.run("agent", "remove", name)

    async def state_keys(self, name: str) -> list[str]:
        return [e["key"] for e in (await self.run("agent", "state", "list", name))["entries"]]

    async def get_state(self, name: str, key: str) -> str:
        return str((await self.run("agent", "state", "get", name, key))["value"])

    async def set_state(self, name: str, key: str, value: str) -> dict[str, Any]:
        return dict(await self.run("agent", "state", "set", name, key, value))

    async def delete_state(self, name: str, key: str) -> None:
        await self.run("agent", "state", "delete", name, key)


DRIVERS = {"sync": SyncDriver, "async": AsyncDriver, "cli": CliDriver}


async def new_key(node: Node, role: str) -> str:
    keys = ApiKeyStore(node.store)
    await keys.setup()
    key, _ = await keys.create(role)
    return key


@pytest.fixture
async def secured(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    async with caxton_node_factory.node(config={"security.auth_enabled": True}) as node:
        yield node


@pytest.mark.parametrize("kind", DRIVERS)
async def test_the_same_scenario_through_each_way(
    kind: str, secured: Node, example_agents: dict[str, bytes], tmp_path: Path
) -> None:
    driver = DRIVERS[kind](url_of(secured), await new_key(secured, "operator"), tmp_path)
    agent = await driver.deploy("echo", example_agents["echo"])
    assert (agent["name"], agent["state"]) == ("echo", "running")
    assert (await driver.get("echo"))["id"] == agent["id"]
    assert (await driver.act("suspend", "echo"))["state"] == "suspended"
    assert (await driver.act("resume", "echo"))["state"] == "running"
    assert await driver.ask("echo", "hello") == "hello"
    assert await driver.names() == ["echo"]
    await driver.remove("echo")
    with pytest.raises(ApiError) as missing:
        await driver.get("echo")
    assert missing.value.status == 404
    assert "Agent not found: echo" in str(missing.value)

    viewer = DRIVERS[kind](url_of(secured), await new_key(secured, "viewer"), tmp_path)
    with pytest.raises(ApiError) as refused:
        await viewer.deploy("nope", example_agents["echo"])
    assert "Forbidden" in str(refused.value) or refused.value.status == 403
    anonymous = DRIVERS[kind](url_of(secured), None, tmp_path)
    with pytest.raises(ApiError, match="authentication required"):
        await anonymous.names()


@pytest.mark.parametrize("kind", DRIVERS)
async def test_an_agents_state_through_each_way(
    kind: str, secured: Node, example_agents: dict[str, bytes], tmp_path: Path
) -> None:
    """The counter keeps its count in its key/value state: an operator reads it, sets
    it (the agent counts on from there), and deletes it; a viewer sees the keys only."""
    driver = DRIVERS[kind](url_of(secured), await new_key(secured, "operator"), tmp_path)
    await driver.deploy("counter", example_agents["counter"])
    for _ in range(2):
        await driver.ask("counter", "tick")
    assert await driver.state_keys("counter") == ["count"]
    assert await driver.get_state("counter", "count") == "2"
    entry = await driver.set_state("counter", "count", "41")
    assert (entry["key"], entry["value"], entry["size"]) == ("count", "41", 2)
    assert (await driver.ask("counter", "tick"))["count"] == 42
    await driver.set_state("counter", "notes/a b", "é")  # any text, slashes and all
    assert await driver.get_state("counter", "notes/a b") == "é"
    assert await driver.state_keys("counter") == ["count", "notes/a b"]
    await driver.delete_state("counter", "notes/a b")
    with pytest.raises(ApiError) as missing:
        await driver.get_state("counter", "notes/a b")
    assert missing.value.status == 404
    assert "has no key 'notes/a b'" in str(missing.value)

    viewer = DRIVERS[kind](url_of(secured), await new_key(secured, "viewer"), tmp_path)
    assert await viewer.state_keys("counter") == ["count"]
    with pytest.raises(ApiError) as refused:
        await viewer.get_state("counter", "count")
    assert refused.value.status in (400, 403)  # the CLI's exit status 1 reads as 400
    assert "update" in str(refused.value)


async def test_tls_with_a_private_ca(caxton_node_factory: NodeFactory, tmp_path: Path) -> None:
    from caxton.security.pki import init_ca, issue_node_cert

    ca = init_ca(tmp_path / "ca")
    issued = issue_node_cert(tmp_path / "ca", "api-node", tmp_path / "node", hosts=["127.0.0.1"])
    config = {
        "networking.tls_enabled": True,
        "networking.tls_cert_path": str(issued.cert_path),
        "networking.tls_key_path": str(issued.key_path),
    }
    async with caxton_node_factory.node(config=config) as node:
        url = url_of(node, "https")
        async with AsyncClient(url, ca_cert=ca.cert_path) as client:
            assert await client.health() == {"status": "healthy"}
        async with AsyncClient(url, verify=False) as client:
            assert await client.health() == {"status": "healthy"}
        async with AsyncClient(url) as client:
            with pytest.raises(ConnectionProblem, match="--ca-cert"):
                await client.health()
        async with AsyncClient(url_of(node, "http")) as client:
            with pytest.raises(ConnectionProblem):
                await client.health()

        def cli(*args: str) -> Any:
            return CliRunner().invoke(make_cli(PluginHost()), ["resources", *args, "--json"])

        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(None, cli, "--api-url", url, "--ca-cert",
                                          str(ca.cert_path))  # fmt: skip
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["nodes"][0]["node_id"] == node.node_id
        done = await loop.run_in_executor(None, cli, "--api-url", url, "--insecure")
        assert done.exit_code == 0, done.output
        done = await loop.run_in_executor(None, cli, "--api-url", url)
        assert done.exit_code == 1
        assert "--ca-cert" in done.stderr


async def test_a_503_goes_to_the_next_node(
    caxton_node_factory: NodeFactory, aiohttp_server: Any
) -> None:
    """The first URL answers as a minority node does; the request goes to the next."""
    refused: list[str] = []

    async def minority(request: web.Request) -> web.Response:
        refused.append(request.path)
        return web.json_response(
            {"error": "Read-only (minority partition)", "details": "n1 is read-only"}, status=503
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", minority)
    server = await aiohttp_server(app)
    async with caxton_node_factory.node() as node:
        urls = [str(server.make_url("")).rstrip("/"), url_of(node)]
        async with AsyncClient(urls) as client:
            assert (await client.resources())["nodes"][0]["node_id"] == node.node_id
        async with AsyncClient(urls[:1]) as client:
            with pytest.raises(ApiError) as only:
                await client.resources()
        assert only.value.status == 503
        assert refused == ["/api/v1/resources", "/api/v1/resources"]


async def test_the_event_stream(caxton_node_factory: NodeFactory) -> None:
    async with (
        caxton_node_factory.node() as node,
        AsyncClient(url_of(node)) as client,
    ):
        events = [e async for e in client.cluster_event_stream(history=5, follow=False)]
        assert all("text" in e for e in events)


def test_bad_settings_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="expected http://HOST:PORT"):
        Client("ftp://x")
    with pytest.raises(ValueError, match="at least one"):
        Client([])
    with (
        pytest.raises(ConnectionProblem, match="connection refused"),
        Client("http://127.0.0.1:9") as client,
    ):
        client.health()


def test_tls_context_is_the_ca(tmp_path: Path) -> None:
    from caxton.client import Settings
    from caxton.security.pki import init_ca

    ca = init_ca(tmp_path / "ca")
    context = Settings(["https://x:1"], ca_cert=ca.cert_path).tls()
    assert isinstance(context, ssl.SSLContext)
    assert Settings(["https://x:1"], verify=False).tls() is False


def test_every_core_route_has_a_client_method(caxton_node_factory: NodeFactory) -> None:
    """Each REST route of core is an Operations method (streams: Client.stream and
    Client.iter_bytes; the console's files are for browsers)."""
    import inspect
    import re

    from caxton.api.server import build_app
    from caxton.client import Call
    from caxton.client.operations import Operations

    class Recorder(Operations[Call]):
        def _send(self, call: Call) -> Call:
            return call

    placeholders = {"wasm": b"\0asm", "body": {}, "content": "x"}
    calls = []
    recorder = Recorder()
    for name, method in inspect.getmembers(recorder, inspect.ismethod):
        if name.startswith("_") or name == "request":
            continue
        args = [
            placeholders.get(p.name, "00000000-0000-0000-0000-000000000000")
            for p in inspect.signature(method).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        calls.append(method(*args))
    streamed = {
        "/api/v1/cluster/events/stream",
        "/api/v1/backups/{backup_id}/archive",
        "/api/v1/diagnostics/dump",
    }
    node = caxton_node_factory.build("routes")
    for route in build_app(node).router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or canonical.startswith("/ui") or canonical in streamed:
            continue
        pattern = re.sub(
            r"\{[^}]+\}", "[^/]+", re.escape(canonical).replace(r"\{", "{").replace(r"\}", "}")
        )
        assert any(c.method == route.method and re.fullmatch(pattern, c.path) for c in calls), (
            f"no caxton.client method for {route.method} {canonical}"
        )
