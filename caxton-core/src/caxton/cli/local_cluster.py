"""``caxton cluster up`` / ``caxton cluster down``: a local cluster in one command.

``up`` makes a cluster CA in the cluster's directory, issues each node a certificate,
writes one config per node (mutual TLS between nodes, everything on loopback), starts
the nodes as background processes (n1 bootstraps, the others join it), waits until every
node sees every other alive, and prints their API addresses. ``down`` stops them with
SIGTERM, their clean shutdown. The directory keeps what a later ``up`` reuses: the CA,
certificates and each node's data (its agents come back).

What it writes in ``DIR`` (default ``./caxton-cluster``)::

    ca/ca.crt, ca/ca.key          the cluster CA (key 0600)
    nK/config.toml                node K's config
    nK/certs/                     node K's certificate, key and a copy of ca.crt
    nK/data/                      node K's data directory
    nK/node.log                   node K's output
    cluster.json                  the running nodes: id, pid, API URL, cluster address
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from caxton.cli.main import emit_json, render_table
from caxton.errors import CaxtonError
from caxton.plugins import PluginHost
from caxton.security import pki

__all__ = ["cluster_down", "cluster_up", "start_existing"]

STATE_FILE = "cluster.json"
#: Membership timings of the ``--fast`` profile (docs/membership.md, "fast LAN").
FAST_TIMINGS = {
    "gossip_interval": "100ms",
    "probe_interval": "250ms",
    "probe_timeout": "125ms",
    "suspicion_multiplier": 4,
}


#: The quorum lease (and so the wait before a failover) of the ``--fast`` profile.
FAST_DETECTION = "2s"


class LocalClusterError(CaxtonError):
    """A local cluster could not be started or stopped."""


@dataclass
class LocalNode:
    node_id: str
    pid: int
    api_url: str
    cluster_address: str
    log: str


# -------------------------------------------------------------------------
# Ports, certificates, configs
# -------------------------------------------------------------------------


def _port_free(port: int, udp_too: bool) -> bool:
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp_too else [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_ports(first: int, count: int, *, udp_too: bool = False, taken: set[int]) -> list[int]:
    """``count`` free loopback ports from ``first`` up (0: any free ports)."""
    ports: list[int] = []
    candidate = first
    while len(ports) < count:
        if first == 0:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                candidate = int(sock.getsockname()[1])
        if candidate not in taken and _port_free(candidate, udp_too):
            ports.append(candidate)
            taken.add(candidate)
        if first:
            candidate += 1
            if candidate > 65535:
                raise LocalClusterError(f"no {count} free ports from {first} up on 127.0.0.1")
    return ports


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text("\n".join(lines))
    path.chmod(0o600)


def _certificates(directory: Path, node_ids: list[str]) -> None:
    """The cluster CA (made once) and a certificate for each node that has none."""
    ca_dir = directory / "ca"
    if not (ca_dir / "ca.crt").exists():
        pki.init_ca(ca_dir, name=f"Caxton local cluster CA ({directory.resolve().name})")
    for node_id in node_ids:
        certs = directory / node_id / "certs"
        if not (certs / "node.crt").exists():
            pki.issue_node_cert(ca_dir, node_id, certs, hosts=["127.0.0.1", "localhost"])


# -------------------------------------------------------------------------
# Processes
# -------------------------------------------------------------------------


def _caxton_command() -> list[str]:
    script = Path(sys.executable).parent / "caxton"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from caxton.cli.main import main; main()"]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running caxton process (not a zombie, not a reused pid)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = status.rpartition(")")[2].split()[0]
    # cmdline reads empty for a moment while a process execs: only a non-empty one that
    # is not caxton's means the pid now belongs to another program.
    return state != "Z" and (not cmdline or b"caxton" in cmdline)


def _get(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(nodes: list[LocalNode], timeout: float) -> None:
    """Until every node answers and sees all the others alive; raise naming the laggard."""
    want = {node.node_id for node in nodes}
    deadline = time.monotonic() + timeout
    waiting = nodes[0]
    while time.monotonic() < deadline:
        for node in nodes:
            if not _alive(node.pid):
                raise LocalClusterError(
                    f"node {node.node_id} exited; the end of {node.log}:\n{_tail(Path(node.log))}"
                )
        try:
            for waiting in nodes:
                members = _get(f"{waiting.api_url}/api/v1/cluster/members")["members"]
                if {m["node_id"] for m in members if m["status"] == "alive"} < want:
                    break
            else:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise LocalClusterError(
        f"node {waiting.node_id} did not see all of {sorted(want)} alive within {timeout:g}s; "
        f"see {waiting.log}"
    )


def read_state(directory: Path) -> list[LocalNode]:
    try:
        data = json.loads((directory / STATE_FILE).read_text())
        return [LocalNode(**node) for node in data["nodes"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalClusterError(f"{directory / STATE_FILE} is unreadable: {exc}") from None


def _refuse_running(directory: Path) -> None:
    running = [node.node_id for node in read_state(directory) if _alive(node.pid)]
    if running:
        raise LocalClusterError(
            f"a local cluster is already up in {directory} ({', '.join(running)}); "
            f"stop it with: caxton cluster down --data-dir {directory}"
        )


def start_cluster(
    directory: Path,
    count: int,
    *,
    api_port: int = 8080,
    cluster_port: int = 7946,
    fast: bool = False,
    transport: str = "tcp",
    plugin_options: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> list[LocalNode]:
    """Start ``count`` nodes in ``directory``; see the module docstring."""
    if count < 1:
        raise LocalClusterError(f"--nodes must be at least 1, got {count}")
    PluginHost().driver_class("transport", transport)  # not installed: say so before starting
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _refuse_running(directory)
    node_ids = [f"n{i}" for i in range(1, count + 1)]
    _certificates(directory, node_ids)
    taken: set[int] = set()
    api_ports = pick_ports(api_port, count, taken=taken)
    cluster_ports = pick_ports(cluster_port, count, udp_too=True, taken=taken)
    starts = [
        functools.partial(
            _start_node,
            directory / node_id,
            node_id,
            api_ports[index],
            cluster_ports[index],
            fast=fast,
            transport=transport,
            plugin_options=plugin_options,
        )
        for index, node_id in enumerate(node_ids)
    ]
    return _launch(directory, starts, timeout)


def _launch(
    directory: Path, starts: Sequence[Callable[[str | None], LocalNode]], timeout: float
) -> list[LocalNode]:
    """Start the nodes in order (the first bootstraps, each other joins it, given its
    cluster address as the seed), wait until every node sees every other alive and
    record them in ``cluster.json``; stop what started if any of it fails."""
    nodes: list[LocalNode] = []
    try:
        for start in starts:
            nodes.append(start(nodes[0].cluster_address if nodes else None))
            if len(nodes) == 1:  # the others join it: wait until it serves
                _wait(nodes, timeout)
        _wait(nodes, timeout)
    except BaseException:
        stop_nodes(nodes, timeout=10)
        raise
    state = {"nodes": [asdict(node) for node in nodes]}
    (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    return nodes


def _start_node(
    home: Path,
    node_id: str,
    api_port: int,
    cluster_port: int,
    seed: str | None,
    *,
    fast: bool,
    transport: str,
    plugin_options: tuple[str, ...],
) -> LocalNode:
    certs = home / "certs"
    cluster: dict[str, Any] = {"bind_addr": f"127.0.0.1:{cluster_port}"}
    if fast:
        cluster.update(FAST_TIMINGS)
    config = home / "config.toml"
    write_config(
        config,
        {
            "node": {"id": node_id, "data_dir": str((home / "data").resolve())},
            "networking": {
                "bind_address": f"127.0.0.1:{api_port}",
                "metrics_address": "127.0.0.1:0",
            },
            "plugins": {"transport": transport},
            "coordination.cluster": cluster,
            **({"partition": {"detection_timeout": FAST_DETECTION}} if fast else {}),
            "security.cluster.mtls": {
                "enabled": True,
                "ca_cert": str((certs / "ca.crt").resolve()),
                "node_cert": str((certs / "node.crt").resolve()),
                "node_key": str((certs / "node.key").resolve()),
            },
        },
    )
    return _spawn(
        home, node_id, config, api_port, cluster_port, seed, plugin_options=plugin_options
    )


def _spawn(
    home: Path,
    node_id: str,
    config: Path,
    api_port: int,
    cluster_port: int,
    seed: str | None,
    *,
    plugin_options: tuple[str, ...] = (),
) -> LocalNode:
    """Start one node in the background from its ``config`` (bootstrapping without
    ``seed``)."""
    command = [*_caxton_command(), "server", "start", "--config", str(config)]
    command += ["--bootstrap"] if seed is None else ["--join", seed]
    for spec in plugin_options:
        command += ["--plugin", spec]
    log_path = home / "node.log"
    process = spawn(command, log_path)
    return LocalNode(
        node_id=node_id,
        pid=process.pid,
        api_url=f"http://127.0.0.1:{api_port}",
        cluster_address=f"127.0.0.1:{cluster_port}",
        log=str(log_path),
    )


def spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in the background, its output appended to ``log_path``, in a
    session of its own (it outlives this command and its terminal's Ctrl-C), without
    this shell's ``CAXTON_*`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAXTON_")}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _port_of(address: str, what: str, config: Path) -> int:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise LocalClusterError(f"{config}: {what} {address!r} is not HOST:PORT")
    return int(port)


def start_existing(directory: Path, *, timeout: float = 60.0) -> list[LocalNode]:
    """Start again the nodes ``caxton cluster up`` made in ``directory``, each from
    the config it wrote there (same ports, same data), n1 bootstrapping; wait until
    every node sees every other alive."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    homes = sorted(
        (home for home in directory.glob("n*") if (home / "config.toml").is_file()),
        key=lambda home: (len(home.name), home.name),
    )
    if not homes:
        raise LocalClusterError(
            f"no local cluster in {directory} (no nK/config.toml): make one with "
            f"caxton cluster up --data-dir {directory}"
        )
    _refuse_running(directory)
    starts = []
    for home in homes:
        config = home / "config.toml"
        try:
            settings = tomllib.loads(config.read_text())
            node_id = str(settings["node"]["id"])
            api = str(settings["networking"]["bind_address"])
            bind = str(settings["coordination"]["cluster"]["bind_addr"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LocalClusterError(f"{config} is not a config of cluster up: {exc}") from None
        api_port = _port_of(api, "networking.bind_address", config)
        cluster_port = _port_of(bind, "coordination.cluster.bind_addr", config)
        starts.append(functools.partial(_spawn, home, node_id, config, api_port, cluster_port))
    return _launch(directory, starts, timeout)


def stop_nodes(nodes: list[LocalNode], *, timeout: float = 30.0) -> dict[str, str]:
    """SIGTERM every running node, SIGKILL what is still running after ``timeout``."""
    outcome: dict[str, str] = {}
    for node in nodes:
        if _alive(node.pid):
            os.kill(node.pid, signal.SIGTERM)
            outcome[node.node_id] = "stopped"
        else:
            outcome[node.node_id] = "was not running"
    deadline = time.monotonic() + timeout
    for node in nodes:
        while _alive(node.pid) and time.monotonic() < deadline:
            _reap(node.pid)
            time.sleep(0.05)
        if _alive(node.pid):
            os.kill(node.pid, signal.SIGKILL)
            outcome[node.node_id] = f"killed (still running after {timeout:g}s)"
        _reap(node.pid)
    return outcome


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child (``up`` failing halfway), so it is not a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -------------------------------------------------------------------------
# Commands
# -------------------------------------------------------------------------

_dir_option = click.option(
    "--data-dir",
    "data_dir",
    type=click.Path(file_okay=False),
    default="caxton-cluster",
    show_default=True,
    help="The cluster's directory: CA, certificates, configs, each node's data and log.",
)


@click.command("up")
@click.option("--nodes", "count", type=click.IntRange(1, 64), default=3, show_default=True)
@_dir_option
@click.option(
    "--api-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="n1's API port; the others count up from it, skipping ports in use (0: any).",
)
@click.option(
    "--cluster-port",
    type=click.IntRange(0, 65535),
    default=7946,
    show_default=True,
    help="n1's node-to-node port, likewise.",
)
@click.option("--transport", default="tcp", show_default=True, help="Transport driver.")
@click.option(
    "--fast",
    is_flag=True,
    help="LAN test timings: failures found in ~1.5 s, failover after ~2.5 s.",
)
@click.option(
    "--plugin",
    "plugin_options",
    multiple=True,
    metavar="SPEC",
    help="Passed to every node's 'server start' (kind=name, pkg.module, no:NAME).",
)
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cluster_up(
    count: int,
    data_dir: str,
    api_port: int,
    cluster_port: int,
    transport: str,
    fast: bool,
    plugin_options: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Start a local cluster of N nodes on loopback, with mutual TLS between them."""
    directory = Path(data_dir)
    nodes = start_cluster(
        directory,
        count,
        api_port=api_port,
        cluster_port=cluster_port,
        fast=fast,
        transport=transport,
        plugin_options=plugin_options,
        timeout=timeout,
    )
    if as_json:
        emit_json({"data_dir": str(directory), "nodes": [asdict(node) for node in nodes]})
        return
    click.echo(
        render_table(
            ("NODE-ID", "API", "CLUSTER", "PID", "LOG"),
            [(n.node_id, n.api_url, n.cluster_address, n.pid, n.log) for n in nodes],
        )
    )
    click.echo(
        f"\n{count} nodes up, each sees all the others alive. Try:\n"
        f"  caxton cluster members --api-url {nodes[0].api_url}\n"
        f"Stop them with: caxton cluster down --data-dir {directory}"
    )


@click.command("down")
@_dir_option
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for each clean shutdown before SIGKILL.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cluster_down(data_dir: str, timeout: float, as_json: bool) -> None:
    """Stop the local cluster that 'caxton cluster up' started (its data stays)."""
    directory = Path(data_dir)
    nodes = read_state(directory)
    if not nodes:
        raise LocalClusterError(f"no local cluster in {directory} (no {STATE_FILE})")
    outcome = stop_nodes(nodes, timeout=timeout)
    (directory / STATE_FILE).unlink(missing_ok=True)
    if as_json:
        emit_json({"data_dir": str(directory), "nodes": outcome})
        return
    for node_id, what in outcome.items():
        click.echo(f"{node_id}: {what}")
