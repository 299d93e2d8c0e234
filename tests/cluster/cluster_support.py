"""Real ``caxton server start`` processes on loopback, for the cluster tests and
``benchmarks/bench_cluster.py``.

A :class:`ProcessCluster` writes one config file, picks free ports for each node (the
cluster port must be free for TCP and UDP: the tcp transport listens on both), starts
the first node with ``--bootstrap`` and the others with ``--join``, and talks to every
node through its REST API. Processes are killed when the cluster is closed.

A ``restartable`` cluster starts its nodes the way an operator's service manager would:
each node's config file holds all of its own settings and the node starts with
``caxton server start --config nK.toml`` through :meth:`ProcessCluster.start_command`,
the template ``caxton cluster rolling-restart`` and ``upgrade start`` take as
``--command``. Each node writes its pid to ``nK.pid``, so a :class:`NodeProcess`
follows the process such a command started (:class:`AdoptedProcess`).

:func:`build_release` makes a second installable release of this checkout (another
version number) in a venv of its own, for the rolling-upgrade tests.

Nodes can also run in Linux network namespaces on one bridge (:class:`NetnsLab`), each
binding its own address, so an nftables rule on the bridge makes a real network
partition (tests/cluster/test_partition_netns.py).

A plain module, not conftest.py, so the benchmark can import it too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ECHO_WAT = ROOT / "examples" / "agents" / "wat" / "echo.wat"

#: Membership timings for tests: failures found in about two seconds.
FAST = {
    "gossip_interval": "100ms",
    "probe_interval": "250ms",
    "probe_timeout": "125ms",
    "suspicion_multiplier": 4,
}


def caxton_command() -> list[str]:
    script = Path(sys.executable).parent / "caxton"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from caxton.cli.main import main; main()"]


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``CAXTON_*`` settings, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAXTON_")}
    return {**base, **(extra or {})}


def http_json(url: str, path: str, body: Any = None, timeout: float = 15) -> Any:
    """``GET`` (or with ``body``, ``POST``) ``url + path``; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def echo_wasm() -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(ECHO_WAT.read_text()))


#: Ports handed out by :func:`free_port` in this process (never handed out twice).
_GIVEN: set[int] = set()


def _below_ephemeral() -> range:
    """Ports below the kernel's ephemeral range: no outgoing connection takes one of them
    between :func:`free_port` and the node's bind (a port from ``bind(0)`` is in that
    range, and CI saw "Address already in use" from exactly that race)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10_000, max(10_001, low))


def free_port(udp_too: bool = True) -> int:
    """A port free for TCP (and UDP, when asked) on 127.0.0.1, below the ephemeral range."""
    ports = _below_ephemeral()
    pick = random.Random(os.getpid() * 1_000_003 + time.monotonic_ns())
    for _ in range(200):
        port = pick.choice(ports)
        if port in _GIVEN:
            continue
        try:
            with socket.socket() as tcp:
                tcp.bind(("127.0.0.1", port))
            if udp_too:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port found in {ports.start}-{ports.stop - 1}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> None:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class AdoptedProcess:
    """A node process this test did not start (``caxton cluster rolling-restart`` did),
    followed by its pid: the part of :class:`subprocess.Popen` the tests use. Its exit
    status is not ours to collect: a finished one reports ``-1``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                stat = Path(f"/proc/{self.pid}/stat").read_text()
                state = stat.rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                state = "X"
            if state in ("Z", "X"):  # a zombie is as gone as a reaped one
                self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.05)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class NodeProcess:
    """One node process, its ports and its REST API.

    By default it binds free ports on 127.0.0.1; with ``netns`` it runs in that network
    namespace (``ip netns exec``) and binds ``host`` on the fixed ports 7946, 8080 and
    9090, which no other process there uses.
    """

    def __init__(
        self,
        cluster: ProcessCluster,
        node_id: str,
        *,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.host = host
        self.netns = netns
        if netns is None:
            self.cluster_port = free_port(udp_too=True)
            self.api_port = free_port(udp_too=False)
            self.metrics_port = free_port(udp_too=False)
        else:
            self.cluster_port, self.api_port, self.metrics_port = 7946, 8080, 9090
        self.data_dir = cluster.base_dir / node_id
        self.log_path = cluster.base_dir / f"{node_id}.log"
        #: Where a node of a restartable cluster writes its pid.
        self.pid_path = cluster.base_dir / f"{node_id}.pid"
        self._process: subprocess.Popen[bytes] | AdoptedProcess | None = None
        self.config_path = cluster.config_for(self)
        #: Sent with every request (X-API-Key) when the nodes authenticate.
        self.api_key: str | None = None
        #: API keys made for it before it started, by role (ProcessCluster.start).
        self.keys: dict[str, str] = {}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.cluster_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | AdoptedProcess | None:
        """This node's process: the one started last, by this test or (restartable
        cluster) by a command that wrote another pid to :attr:`pid_path`."""
        if self.cluster.restartable:
            try:
                pid = int(self.pid_path.read_text())
            except (OSError, ValueError):  # none yet, or being written
                pid = None
            if pid is not None and (self._process is None or self._process.pid != pid):
                self._process = AdoptedProcess(pid)
        return self._process

    @process.setter
    def process(self, process: subprocess.Popen[bytes] | AdoptedProcess | None) -> None:
        self._process = process

    def start(
        self, *, bootstrap: bool = False, join: Iterable[str] = (), token: str | None = None
    ) -> None:
        seeds = list(join)
        flags = [
            *(["--bootstrap"] if bootstrap else []),
            *(["--token", token] if token is not None else []),
        ]
        if self.cluster.restartable:
            command = self.cluster.start_command(caxton_command(), seeds, flags)
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", command.format(node=self.node_id)], env=clean_environment()
            )
            return
        args = [
            *(["ip", "netns", "exec", self.netns] if self.netns else []),
            *caxton_command(),
            "server",
            "start",
            "--config",
            str(self.config_path),
            "--node-id",
            self.node_id,
            "--bind-addr",
            self.address,
            "--api-addr",
            f"{self.host}:{self.api_port}",
            "--metrics-addr",
            f"{self.host}:{self.metrics_port}",
            "--data-dir",
            str(self.data_dir),
            "--plugin",
            f"transport={self.cluster.transport}",
            *flags,
        ]
        if seeds:
            args += ["--join", ",".join(seeds)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=clean_environment()
        )
        log.close()

    @property
    def running(self) -> bool:
        process = self.process
        return process is not None and process.poll() is None

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        if self.api_key is not None:
            headers["X-API-Key"] = self.api_key
        request = urllib.request.Request(
            self.api_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                detail = json.loads(text)
            except ValueError:
                detail = text.decode(errors="replace")
            raise ApiError(exc.code, detail) from None
        return json.loads(payload) if payload else None

    def ready(self) -> bool:
        try:
            self.request("GET", "/ready", timeout=2.0)
        except (ApiError, OSError):
            return False
        return True

    def members(self) -> dict[str, str]:
        """node id -> status, as this node sees them ({} when it does not answer)."""
        try:
            data = self.request("GET", "/api/v1/cluster/members", timeout=3.0)
        except (ApiError, OSError):
            return {}
        return {m["node_id"]: m["status"] for m in data["members"]}

    def agents(self) -> dict[str, str]:
        """agent name -> node id, from this node's registry."""
        data = self.request("GET", "/api/v1/cluster/agents")
        return {a["name"]: a["node_id"] for a in data["agents"]}

    def deploy(self, name: str, wasm: bytes) -> dict[str, Any]:
        body = {"name": name, "wasm_module": base64.b64encode(wasm).decode()}
        result: dict[str, Any] = self.request("POST", "/api/v1/agents", body)
        return result

    def ask(self, receiver: str, content: Any, wait_ms: int = 5000) -> dict[str, Any]:
        """Send a request through this node's API and return the reply."""
        body = {
            "performative": "request",
            "receiver": receiver,
            "content": content,
            "wait_ms": wait_ms,
        }
        result: dict[str, Any] = self.request(
            "POST", "/api/v1/messages", body, timeout=wait_ms / 1000 + 10
        )
        return result

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (a graceful shutdown, which leaves the cluster) and wait."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""


class ProcessCluster:
    """Node processes sharing one config, see the module docstring."""

    def __init__(
        self,
        base_dir: Path,
        *,
        transport: str = "tcp",
        cluster: Mapping[str, Any] | None = None,
        mtls_dir: Path | None = None,
        auto_tls: bool = False,
        gossip_key: bool = True,
        extra: Mapping[str, Mapping[str, Any]] | None = None,
        restartable: bool = False,
    ) -> None:
        self.base_dir = base_dir
        base_dir.mkdir(parents=True, exist_ok=True)
        self.transport = transport
        self.cluster_settings = dict(FAST if cluster is None else cluster)
        self.mtls_dir = mtls_dir
        #: Neither certificates nor plaintext in the config: the CA made at --bootstrap
        #: and join tokens (caxton.security.node_tls).
        self.auto_tls = auto_tls
        self.gossip_key = base64.b64encode(os.urandom(32)).decode() if gossip_key else None
        self.extra = dict(extra or {})
        #: Each node's settings in its config file, started by :meth:`start_command`.
        self.restartable = restartable
        self.nodes: dict[str, NodeProcess] = {}

    def config_for(self, node: NodeProcess) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "coordination.cluster": dict(self.cluster_settings),
            "observability": {"log_level": "info"},
        }
        if self.mtls_dir is not None:
            certs = self.mtls_dir / node.node_id
            sections["security.cluster.mtls"] = {
                "enabled": True,
                "ca_cert": str(certs / "ca.crt"),
                "node_cert": str(certs / "node.crt"),
                "node_key": str(certs / "node.key"),
            }
        elif not self.auto_tls:
            sections["transport"] = {"plaintext": True}
        if self.gossip_key:
            sections["security.cluster"] = {"gossip_keys": [self.gossip_key]}
        if self.restartable:
            if node.netns is not None:
                raise ValueError("a restartable cluster's start command runs in this namespace")
            sections["node"] = {"id": node.node_id, "data_dir": str(node.data_dir)}
            sections["coordination.cluster"]["bind_addr"] = node.address
            sections["networking"] = {
                "bind_address": f"{node.host}:{node.api_port}",
                "metrics_address": f"{node.host}:{node.metrics_port}",
            }
            sections["plugins"] = {"transport": self.transport}
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        path = self.base_dir / f"{node.node_id}.toml"
        write_toml(path, sections)
        return path

    def start_command(
        self, caxton: Sequence[str], join: Iterable[str] = (), flags: Sequence[str] = ()
    ) -> str:
        """How a node of this (restartable) cluster starts, as a shell command with
        ``{node}`` for its id: the ``--command`` of ``caxton cluster rolling-restart``
        and ``upgrade start``. It records the node's pid in ``{node}.pid`` and runs
        ``caxton server start --config {node}.toml`` with ``caxton`` (the command of the
        release to run), joining ``join``, its output appended to ``{node}.log``."""
        if not self.restartable:
            raise ValueError("only a restartable cluster's nodes start from their config")

        def shell(*words: str) -> str:  # quoted for sh, braces kept from str.format
            return shlex.join(words).replace("{", "{{").replace("}", "}}")

        seeds = ",".join(join)
        server = shell(*caxton, "server", "start", *flags, *(["--join", seeds] if seeds else []))
        base = shell(str(self.base_dir))
        return (
            f"echo $$ > {base}/{{node}}.pid && exec {server} --config {base}/{{node}}.toml "
            f">> {base}/{{node}}.log 2>&1"
        )

    def add(self, node_id: str, **where: str) -> NodeProcess:
        """A node, not started; ``where``: ``host`` and ``netns`` (see NodeProcess)."""
        node = NodeProcess(self, node_id, **where)
        self.nodes[node_id] = node
        return node

    def start(
        self, count: int, *, timeout: float = 60.0, roles: Iterable[str] = ()
    ) -> list[NodeProcess]:
        """Start ``count`` nodes (n1 bootstraps, the others join it) and wait until
        every node sees every other alive. ``roles``: each node first gets an API key
        per role in its store (``node.keys[role]``; for ``security.auth_enabled``); an
        ``admin`` one is what :meth:`NodeProcess.request` sends."""
        nodes = [self.add(f"n{i}") for i in range(1, count + 1)]
        for node in nodes:
            node.keys = {role: new_key(node, role) for role in roles}
            node.api_key = node.keys.get("admin")
        first = nodes[0]
        first.start(bootstrap=True)
        self.wait_until(first.ready, timeout, "n1 ready")
        for node in nodes[1:]:
            node.start(join=[first.address])
        self.wait_converged(nodes, timeout)
        return nodes

    def wait_converged(self, nodes: list[NodeProcess], timeout: float = 60.0) -> None:
        ids = {n.node_id for n in nodes}

        def converged() -> bool:
            return all({k for k, v in n.members().items() if v == "alive"} >= ids for n in nodes)

        self.wait_until(converged, timeout, f"{sorted(ids)} all alive in every view")

    def wait_until(
        self, condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            dead = [n.node_id for n in self.nodes.values() if n.process and not n.running]
            if dead and what.endswith("ready"):
                break
            time.sleep(interval)
        logs = "\n".join(f"--- {n.node_id} ---\n{n.log()[-3000:]}" for n in self.nodes.values())
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{logs}")

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()


def run_caxton(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One ``caxton`` command, run as a user runs it; its output captured."""
    return subprocess.run(
        [*caxton_command(), *args], capture_output=True, text=True, env=clean_environment(),
        timeout=timeout,
    )  # fmt: skip


def new_key(node: NodeProcess, role: str) -> str:
    """An API key with ``role`` in ``node``'s store (made before the node starts)."""
    made = subprocess.run(
        [*caxton_command(), "security", "api-key", "create", "--role", role, "--json",
         "--data-dir", str(node.data_dir)],
        capture_output=True, text=True, env=clean_environment(), timeout=60,
    )  # fmt: skip
    if made.returncode != 0:
        raise RuntimeError(f"caxton security api-key create failed: {made.stderr}")
    key: str = json.loads(made.stdout)["key"]
    return key


#: The distributions a second release needs for a tcp cluster.
RELEASE_PACKAGES = ("caxton-core", "plugins/caxton-transport-tcp")


def build_release(work: Path, version: str, uv: str) -> list[str]:
    """Another installable release of this checkout: :data:`RELEASE_PACKAGES` copied
    under ``work`` with ``version`` as their version and installed with ``uv`` into a
    venv of their own (``work/venv``); its ``caxton`` command."""
    copies = []
    for package in RELEASE_PACKAGES:
        copy = work / Path(package).name
        shutil.copytree(
            ROOT / package,
            copy,
            ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info", "build", "dist"),
        )
        pyproject = copy / "pyproject.toml"
        text = pyproject.read_text()
        pyproject.write_text(
            re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', text, count=1)
        )
        copies.append(str(copy))
    venv = work / "venv"
    for command in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *copies],
    ):
        built = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if built.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed: {built.stderr}")
    return [str(venv / "bin" / "caxton")]


@contextlib.contextmanager
def cluster_maker(base_dir: Path) -> Iterator[Callable[..., ProcessCluster]]:
    """``make(**options)`` -> a :class:`ProcessCluster` under ``base_dir``; every one is
    killed on exit."""
    clusters: list[ProcessCluster] = []

    def make(**options: Any) -> ProcessCluster:
        base = base_dir / f"cluster{len(clusters)}"
        base.mkdir(parents=True)
        cluster = ProcessCluster(base, **options)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()


class AskLoop:
    """Requests through nodes' APIs to agents, round after round in a thread, until
    stopped: how many were sent and which failed (``"TARGET N via NODE: why"``)."""

    def __init__(self, routes: Sequence[tuple[NodeProcess, str]], wait_ms: int = 5000) -> None:
        self.routes = list(routes)
        self.wait_ms = wait_ms
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> AskLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for node, target in self.routes:
                text = f"{target} {self.sent} via {node.node_id}"
                try:
                    reply = node.ask(target, text, wait_ms=self.wait_ms)["reply"]["content"]
                    if reply != text:
                        self.failures.append(f"{text}: {reply!r}")
                except Exception as exc:
                    self.failures.append(f"{text}: {exc}")
                self.sent += 1


def issue_certificates(directory: Path, node_ids: Iterable[str]) -> Path:
    """A CA and one certificate per node, made with the ``caxton security`` commands."""
    run = [*caxton_command(), "security"]
    ca = directory / "ca"
    subprocess.run([*run, "init-ca", "--output", str(ca)], check=True, capture_output=True)
    for node_id in node_ids:
        subprocess.run(
            [*run, "issue-cert", "--ca", str(ca), "--node-id", node_id,
             "--output", str(directory / node_id), "--host", "127.0.0.1"],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return directory


# -------------------------------------------------------------------------
# Real network partitions: network namespaces on a bridge, cut with nftables
# -------------------------------------------------------------------------


Link = tuple[str, str]


def split_links(groups: Sequence[Sequence[str]]) -> set[Link]:
    """The directed links a partition into ``groups`` cuts: every pair across groups."""
    return {
        (a, b)
        for i, group in enumerate(groups)
        for j, other in enumerate(groups)
        if i != j
        for a in group
        for b in other
    }


def bridge_links(left: Sequence[str], middle: str, right: Sequence[str]) -> set[Link]:
    """A bridge: ``left`` and ``right`` cut apart, ``middle`` (in neither) reaching both."""
    if middle in (*left, *right):
        raise ValueError(f"the bridge {middle} must be in neither side")
    return split_links([left, right])


def ring_links(names: Sequence[str]) -> set[Link]:
    """A majorities ring: every node keeps only its two neighbours on ``names``."""
    count = len(names)
    neighbours = {names[i]: {names[(i - 1) % count], names[(i + 1) % count]} for i in range(count)}
    return {(a, b) for a in names for b in names if a != b and b not in neighbours[a]}


def netns_missing() -> str | None:
    """What this machine lacks for :class:`NetnsLab` (None: nothing)."""
    if not sys.platform.startswith("linux"):
        return "Linux network namespaces"
    if os.geteuid() != 0:
        return "root (CAP_NET_ADMIN) to create network namespaces and nftables rules"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"the `{tool}` command (apt-get install -y {package})"
    probe = f"cxprobe{os.getpid() % 100_000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"CAP_NET_ADMIN: `ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")


class NetnsLab:
    """Network namespaces joined by one bridge, and nftables rules that cut them apart.

    Every name carries a token unique to the run, so concurrent runs do not collide.
    Each namespace gets a veth pair (one end on the bridge, the other, ``eth0``, inside)
    and an address ``10.77.S.N/24``; the host gets ``10.77.S.254`` on the bridge, so
    the test process reaches every node's API. :meth:`cut` drops, in a ``bridge``-family
    nftables table, what the bridge forwards from or to a namespace's veth: the nodes
    no longer reach each other, while the host still reaches each of them (that traffic
    is the bridge's own input and output, not forwarded). :meth:`block` drops single
    directions (one-way cuts); :meth:`split`, :meth:`bridge_cut` and :meth:`ring` build
    the non-transitive shapes from it; :meth:`loss` drops a share of a node's packets;
    :meth:`heal` undoes all of them. :meth:`close` removes everything, and is safe to
    call twice or after a half-made setup.
    """

    def __init__(self) -> None:
        self.token = f"{os.getpid() % 10_000:04d}{os.urandom(1).hex()}"
        self.bridge = f"cxb{self.token}"
        self.table = f"caxton_{self.token}"
        self.subnet = self._free_subnet()
        self.namespaces: dict[str, str] = {}  # name -> namespace
        self.veths: dict[str, str] = {}  # name -> the veth end on the bridge
        self.addresses: dict[str, str] = {}
        self._cut = False
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _free_subnet() -> int:
        used = subprocess.run(
            ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True
        ).stdout
        taken = {int(ip.split(".")[2]) for ip in used.split() if ip.startswith("10.77.")}
        free = [n for n in range(256) if n not in taken]
        if not free:
            raise RuntimeError("no free 10.77.S.0/24 subnet on this host")
        return free[int.from_bytes(os.urandom(2), "big") % len(free)]

    @property
    def host_address(self) -> str:
        return f"10.77.{self.subnet}.254"

    def add(self, name: str) -> str:
        """A namespace for node ``name`` on the bridge; returns its address."""
        index = len(self.namespaces) + 1
        namespace = f"cx{self.token}-{name}"
        veth, inner = f"cx{self.token}v{index}", f"cx{self.token}i{index}"
        address = f"10.77.{self.subnet}.{index}"
        _run("ip", "netns", "add", namespace)
        self.namespaces[name] = namespace
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", inner)
        self.veths[name] = veth
        _run("ip", "link", "set", inner, "netns", namespace)
        _run("ip", "link", "set", veth, "master", self.bridge)
        _run("ip", "link", "set", veth, "up")
        inside = ("ip", "netns", "exec", namespace, "ip")
        _run(*inside, "link", "set", inner, "name", "eth0")
        _run(*inside, "addr", "add", f"{address}/24", "dev", "eth0")
        _run(*inside, "link", "set", "eth0", "up")
        _run(*inside, "link", "set", "lo", "up")
        self.addresses[name] = address
        return address

    def _rules(self) -> None:
        if not self._cut:
            _run("nft", "add", "table", "bridge", self.table)
            _run(
                "nft", "add", "chain", "bridge", self.table, "cut",
                "{ type filter hook forward priority 0; policy accept; }",
            )  # fmt: skip
            self._cut = True

    def cut(self, *names: str) -> None:
        """Drop everything the bridge forwards from or to the namespaces ``names``."""
        self._rules()
        for name in names:
            veth = self.veths[name]
            _run("nft", "add", "rule", "bridge", self.table, "cut", "iifname", veth, "drop")
            _run("nft", "add", "rule", "bridge", self.table, "cut", "oifname", veth, "drop")

    isolate = cut

    def block(self, links: Iterable[tuple[str, str]]) -> None:
        """Drop what the bridge forwards from ``a`` to ``b``, for each ``(a, b)``: one
        direction only, so ``b`` still reaches ``a`` unless ``(b, a)`` is listed too."""
        self._rules()
        for source, target in links:
            _run(
                "nft", "add", "rule", "bridge", self.table, "cut",
                "iifname", self.veths[source], "oifname", self.veths[target], "drop",
            )  # fmt: skip

    def cut_one_way(self, source: str, target: str) -> None:
        """``target`` no longer hears ``source``; ``source`` still hears ``target``."""
        self.block([(source, target)])

    def split(self, *groups: Iterable[str]) -> None:
        """Only members of one group reach each other (a clean partition)."""
        self.block(split_links([list(group) for group in groups]))

    def bridge_cut(self, left: Iterable[str], middle: str, right: Iterable[str]) -> None:
        """``left`` and ``right`` do not reach each other; ``middle`` reaches both."""
        self.block(bridge_links(list(left), middle, list(right)))

    def ring(self, names: Sequence[str]) -> None:
        """Each node reaches only its two neighbours on the ring ``names``: with five
        nodes every node sees a majority (itself and two), a different one each."""
        self.block(ring_links(names))

    def loss(self, name: str, percent: int) -> None:
        """Drop ``percent`` % of what ``name`` sends to the other namespaces, at random
        (nftables ``numgen random``: it needs no qdisc module, which tc netem does)."""
        self._rules()
        _run(
            "nft", "add", "rule", "bridge", self.table, "cut", "iifname", self.veths[name],
            "numgen", "random", "mod", "100", "<", str(percent), "drop",
        )  # fmt: skip

    def heal(self) -> None:
        """Delete the drop rules (their whole table): cuts and losses alike."""
        if self._cut:
            _run("nft", "delete", "table", "bridge", self.table)
            self._cut = False

    def close(self) -> None:
        """Remove the rules, namespaces, veths and bridge; ignore what is already gone."""
        commands = [["ip", "netns", "del", namespace] for namespace in self.namespaces.values()]
        commands += [["ip", "link", "del", veth] for veth in self.veths.values()]
        commands.append(["ip", "link", "del", self.bridge])
        if self._cut:
            commands.insert(0, ["nft", "delete", "table", "bridge", self.table])
            self._cut = False
        for command in commands:
            subprocess.run(command, capture_output=True)
        self.namespaces.clear()
        self.veths.clear()
