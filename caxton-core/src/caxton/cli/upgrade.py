"""``caxton cluster rolling-restart`` and ``caxton cluster upgrade start|status|rollback``.

The operator's machine drives the cluster through the nodes' REST APIs, one node at a
time (docs/cluster.md, "Rolling restart and upgrade"):

1. **drain**: the node's agents move to the others (``POST /api/v1/cluster/drain``,
   when the node offers it; otherwise they restart with the node from its data);
2. **stop**: ``POST /api/v1/cluster/leave`` for that node: it hands over its queued
   messages, announces the leave and exits; wait until the others record it as left
   (and, for a ``cluster up`` cluster, until its process is gone);
3. **start** the node again, at the new version for an upgrade: the ``--command``
   template (``{node}``, ``{version}``, ``{host}``, ``{address}``, ``{config}``, ``{join}``), run
   in the background with its output in the node's log; for a ``cluster up`` cluster
   without ``--command``, the node's own ``caxton server start`` again (an upgrade
   then uses this CLI's ``caxton``, which must be the target version);
4. **wait** until it is alive again in the view of a node that stayed, gossiping the
   target version, and that node is read-write;
5. **move back** the agents that moved off (``POST /api/v1/agents/{id}/move``, when
   offered); then the next node.

The first failure stops the run and says which node and step; nothing else is touched.
``upgrade rollback`` takes the nodes already done (and the failed one, if it was
stopped) back to the version they ran, in reverse order, the same way. Progress is
kept in a state file (``upgrade.json`` in the ``cluster up`` directory, or
``$XDG_STATE_HOME/caxton/upgrade.json``), which ``upgrade status`` reads together with
the versions the members gossip.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from caxton import __version__
from caxton.cli import local_cluster
from caxton.cli.client import _duration, api_options, json_option
from caxton.cli.client_http import ApiClient, ApiError
from caxton.cli.main import emit_json, render_table
from caxton.errors import CaxtonError

__all__ = ["cluster_upgrade", "rolling_restart"]

STATE_NAME = "upgrade.json"
#: The statuses of a node in a run, in the order it goes through them.
STEPS = ("pending", "draining", "stopping", "starting", "rejoining", "moving-back", "done")


class UpgradeError(CaxtonError):
    """A rolling restart or upgrade stopped: which node, which step, why."""


def plain_version(version: str) -> str:
    """``v1.2.0`` (as the runbook writes it) and ``1.2.0`` (as a node gossips it) alike."""
    version = version.strip()
    return version[1:] if version[:1] in ("v", "V") and version[1:2].isdigit() else version


@dataclass
class NodeRun:
    """One node's part of a run."""

    node_id: str
    from_version: str
    to_version: str
    #: Its cluster address (host:port), as the members list shows it.
    address: str = ""
    status: str = "pending"
    #: The agents that ran on it before the drain (moved back afterwards).
    agents: dict[str, str] = field(default_factory=dict)
    #: How it was started before this run (``cluster up``: its argv up to ``server``).
    previous: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    #: Seconds each step took (draining, stopping, starting, rejoining, moving-back).
    steps: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """A rolling restart or upgrade, as the state file keeps it."""

    kind: str  # "upgrade" or "restart"
    version: str
    reason: str
    command: str
    data_dir: str
    api_urls: list[str]
    nodes: list[NodeRun]
    phase: str = "running"  # running, completed, failed, rolling-back, rolled-back
    started_at: float = field(default_factory=time.time)
    canary_duration: float = 0.0
    canary_healthy_since: float = 0.0
    error: str = ""

    @classmethod
    def load(cls, path: Path) -> Run:
        try:
            data = json.loads(path.read_text())
            nodes = [NodeRun(**node) for node in data.pop("nodes")]
            return cls(nodes=nodes, **data)
        except FileNotFoundError:
            raise UpgradeError(
                f"no rolling upgrade or restart recorded in {path}; start one with "
                f"caxton cluster upgrade start --version V"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UpgradeError(f"{path} is unreadable: {exc}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        partial.replace(path)


@dataclass(frozen=True)
class RunOptions:
    """The options every run command takes (see :func:`_common`)."""

    command: str = ""
    data_dir: str | None = None
    drain_timeout: float = 60.0
    rejoin_timeout: float = 120.0
    only: tuple[str, ...] = ()
    state: str | None = None
    as_json: bool = False

    @property
    def path(self) -> Path:
        return state_path(self.data_dir, self.state)


def state_path(data_dir: str | None, state: str | None) -> Path:
    if state:
        return Path(state)
    if data_dir:
        return Path(data_dir) / STATE_NAME
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "caxton" / STATE_NAME


# -------------------------------------------------------------------------
# Talking to the cluster
# -------------------------------------------------------------------------


class Cluster:
    """The nodes' APIs, asked through any node that answers (not the one restarting)."""

    def __init__(self, client: ApiClient, urls: list[str], wait: float = 0.5) -> None:
        self.client = client
        self.urls = list(dict.fromkeys([*client.client.settings.urls, *urls]))
        self.scheme = client.url.split("://", 1)[0]
        self.wait = wait
        #: node id -> its API URL, from the ``api`` address it gossips.
        self.node_urls: dict[str, str] = {}

    def api(self, avoid: str | None = None) -> ApiClient:
        """A client for a node that answers now, other than ``avoid``'s."""
        settings = self.client.client.settings
        for url in self.urls:
            if avoid is not None and url == self.node_urls.get(avoid):
                continue
            candidate = ApiClient(
                url,
                token=settings.token,
                api_key=settings.api_key,
                ca_cert=settings.ca_cert,
                insecure=not settings.verify,
            )
            try:
                candidate.request("GET", "/api/v1/health")
            except click.ClickException:
                continue
            return candidate
        raise UpgradeError(f"no node answers on {', '.join(self.urls)}")

    def members(self, avoid: str | None = None) -> list[dict[str, Any]]:
        members: list[dict[str, Any]] = self.api(avoid).request("GET", "/api/v1/cluster/members")[
            "members"
        ]
        self.node_urls = {
            m["node_id"]: f"{self.scheme}://{m['api']}" for m in members if m.get("api")
        }
        for url in self.node_urls.values():
            if url not in self.urls:
                self.urls.append(url)
        return members

    def agents_on(self, node_id: str) -> dict[str, str]:
        """name -> id of the agents the registry has on ``node_id``."""
        data = self.api(node_id).request("GET", "/api/v1/cluster/agents")
        return {a["name"]: a["id"] for a in data["agents"] if a["node_id"] == node_id}

    def offers(self, method: str, path: str, body: Any, avoid: str | None = None) -> Any:
        """``method path`` on a node; None when no node offers the route (404/405)."""
        try:
            return self.api(avoid).request(method, path, body)
        except ApiError as exc:
            if exc.status == 405 or (exc.status == 404 and "no route matches" in exc.details):
                return None
            raise


# -------------------------------------------------------------------------
# One node
# -------------------------------------------------------------------------


class NodeRestart:
    """Stops and starts one node: see the module docstring."""

    def __init__(
        self,
        cluster: Cluster,
        run: Run,
        *,
        drain_timeout: float,
        rejoin_timeout: float,
        say: Callable[[str], None],
        save: Callable[[], None],
    ) -> None:
        self.cluster = cluster
        self.run = run
        self.drain_timeout = drain_timeout
        self.rejoin_timeout = rejoin_timeout
        self.say = say
        self.save = save
        self._since = time.monotonic()
        self.local = (
            {n.node_id: n for n in local_cluster.read_state(Path(run.data_dir))}
            if (run.data_dir)
            else {}
        )

    def step(self, node: NodeRun, status: str) -> None:
        now = time.monotonic()
        if node.status in STEPS[1:-1]:
            node.steps[node.status] = round(now - self._since, 2)
        self._since = now
        node.status = status
        self.save()

    def restart(self, node: NodeRun, version: str, command: str, *, down_ok: bool = False) -> None:
        """Take ``node`` through every step; with ``down_ok`` (a rollback of the node an
        upgrade stopped at), a node that is not alive is only started."""
        started = time.monotonic()
        node.error = ""

        def status() -> str | None:
            return _status(self.cluster.members(node.node_id), node.node_id)

        if down_ok and status() in ("left", "failed", None):
            alive = False
        else:  # a suspicion (a busy node, say) may last a moment: wait it out
            self._until(
                lambda: status() == "alive",
                self.rejoin_timeout,
                f"node {node.node_id} was not seen alive (bring it back first)",
            )
            alive = True
        if alive:
            self.step(node, "draining")
            node.agents = self.cluster.agents_on(node.node_id)
            if not node.previous and node.node_id in self.local:
                node.previous = _server_prefix(self.local[node.node_id].pid)
            self._drain(node)
            self.step(node, "stopping")
            self._stop(node)
        self.step(node, "starting")
        process = self._start(node, version, command)
        self.step(node, "rejoining")
        self._rejoined(node, version, process)
        self.step(node, "moving-back")
        self._move_back(node)
        node.seconds = round(time.monotonic() - started, 1)
        self.step(node, "done")

    def _drain(self, node: NodeRun) -> None:
        if not node.agents:
            return
        report = self.cluster.offers(
            "POST",
            "/api/v1/cluster/drain",
            {"node": node.node_id, "timeout_ms": int(self.drain_timeout * 1000)},
            avoid=node.node_id,
        )
        if report is None:
            self.say(
                f"  {node.node_id}: this cluster cannot drain nodes yet; its "
                f"{len(node.agents)} agents restart with it from its data"
            )
            return
        stranded = report.get("stranded") or {}
        if stranded:
            names = ", ".join(f"{n} ({why})" for n, why in sorted(stranded.items()))
            raise UpgradeError(f"node {node.node_id}: agents that could not move off: {names}")
        self.say(f"  {node.node_id}: {len(report.get('moved') or [])} agents moved off")

    def _stop(self, node: NodeRun) -> None:
        try:
            self.cluster.api(node.node_id).request(
                "POST",
                "/api/v1/cluster/leave",
                {"node": node.node_id, "drain_timeout_ms": int(self.drain_timeout * 1000)},
            )
        except click.ClickException as exc:
            # the node may leave before its answer is relayed ("connection ... lost: the
            # peer left"): whether it left is what the members say, below
            self.say(f"  {node.node_id}: leave: {exc.format_message()}")
        self._until(
            lambda: _status(self.cluster.members(node.node_id), node.node_id) in ("left", None),
            self.drain_timeout + 30,
            f"node {node.node_id} did not leave",
        )
        local = self.local.get(node.node_id)
        if local is not None:
            self._until(
                lambda: not local_cluster._alive(local.pid),
                30,
                f"node {node.node_id}'s process {local.pid} did not exit after leaving",
            )

    def _start(self, node: NodeRun, version: str, command: str) -> subprocess.Popen[bytes]:
        argv = self._command(node, version, command)
        process = local_cluster.spawn(argv, self._log_path(node))  # the node outlives us
        local = self.local.get(node.node_id)
        if local is not None:
            local.pid = process.pid
            _save_local(Path(self.run.data_dir), list(self.local.values()))
        return process

    def _command(self, node: NodeRun, version: str, command: str) -> list[str]:
        local = self.local.get(node.node_id)
        home = Path(self.run.data_dir) / node.node_id if local is not None else None
        others = [n.cluster_address for n in self.local.values() if n.node_id != node.node_id]
        values = {
            "node": node.node_id,
            "version": version,
            "config": str(home / "config.toml") if home else "",
            "join": ",".join(others),
            "address": node.address,
            "host": node.address.rpartition(":")[0].strip("[]"),
        }
        if command:
            try:
                return ["/bin/sh", "-c", command.format(**values)]
            except (KeyError, IndexError, ValueError) as exc:
                raise UpgradeError(
                    f"--command: unknown placeholder {exc}; use {{node}}, {{version}}, "
                    f"{{config}}, {{join}}, {{address}}, {{host}}"
                ) from None
        if home is None:
            raise UpgradeError(
                "say how a node is started again: --command (for example "
                "\"ssh {node} 'sudo systemctl start caxton'\"), or --data-dir for a "
                "cluster made by caxton cluster up"
            )
        prefix = node.previous if version == node.from_version and node.previous else None
        if prefix is None:
            if plain_version(__version__) != version:
                raise UpgradeError(
                    f"this caxton is {__version__}, not {version}: run the upgrade with "
                    f"the caxton of {version}, or say how to start it with --command"
                )
            prefix = [*local_cluster._caxton_command(), "server", "start"]
        return [*prefix, "--config", values["config"], "--join", values["join"]]

    def _log_path(self, node: NodeRun) -> Path:
        local = self.local.get(node.node_id)
        if local is not None:
            return Path(local.log)
        path = state_path(self.run.data_dir or None, None).with_name(f"{node.node_id}.start.log")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _rejoined(self, node: NodeRun, version: str, process: subprocess.Popen[bytes]) -> None:
        def back() -> bool:
            code = process.poll()
            if code not in (None, 0):
                raise UpgradeError(
                    f"node {node.node_id}: the start command exited with status {code} "
                    f"(its output: {self._log_path(node)})"
                )
            members = self.cluster.members(node.node_id)
            mine = next((m for m in members if m["node_id"] == node.node_id), None)
            if mine is None or mine["status"] != "alive":
                return False
            running = plain_version(str(mine.get("version") or ""))
            if running != version:
                raise UpgradeError(
                    f"node {node.node_id} came back at version {running or '?'}, not {version}"
                )
            status = self.cluster.api(node.node_id).request("GET", "/api/v1/cluster/status")
            return bool(status.get("mode") == "read-write")

        self._until(back, self.rejoin_timeout, f"node {node.node_id} did not rejoin")

    def _move_back(self, node: NodeRun) -> None:
        now = self.cluster.api(node.node_id).request("GET", "/api/v1/cluster/agents")["agents"]
        moved = [a for a in now if a["name"] in node.agents and a["node_id"] != node.node_id]
        back = 0
        for agent in moved:
            answer = self.cluster.offers(
                "POST", f"/api/v1/agents/{agent['id']}/move", {"to": node.node_id}
            )
            if answer is None:
                self.say(f"  {node.node_id}: agents cannot be moved back yet (no move route)")
                return
            back += 1
        if back:
            self.say(f"  {node.node_id}: {back} agents moved back")

    def _until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except click.ClickException as exc:  # a node restarting: ask again
                last = exc.format_message()
            time.sleep(self.cluster.wait)
        raise UpgradeError(f"{what} within {timeout:g}s" + (f" ({last})" if last else ""))


def _status(members: list[dict[str, Any]], node_id: str) -> str | None:
    return next((m["status"] for m in members if m["node_id"] == node_id), None)


def _server_prefix(pid: int) -> list[str]:
    """The argv a ``cluster up`` node was started with, up to ``server start``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []
    if "server" in argv:
        index = argv.index("server")
        return argv[: index + 2]
    return []


def _save_local(directory: Path, nodes: list[local_cluster.LocalNode]) -> None:
    state = {"nodes": [asdict(node) for node in nodes]}
    (directory / local_cluster.STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


# -------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------


def _execute(
    run: Run,
    client: ApiClient,
    nodes: Iterator[NodeRun],
    options: RunOptions,
    *,
    version_of: Callable[[NodeRun], str],
    command: str,
    down_ok: bool = False,
) -> None:
    path = options.path
    say: Callable[[str], None] = (lambda line: None) if options.as_json else click.echo
    cluster = Cluster(client, [client.url, *run.api_urls])
    restarts = NodeRestart(
        cluster,
        run,
        drain_timeout=options.drain_timeout,
        rejoin_timeout=options.rejoin_timeout,
        say=say,
        save=lambda: run.save(path),
    )
    for node in nodes:
        version = version_of(node)
        if run.kind == "upgrade" and node.from_version == node.to_version:
            node.status = "done"
            say(f"{node.node_id}: already at {version}")
            continue
        say(f"{node.node_id}: restarting at {version}")
        try:
            restarts.restart(node, version, command, down_ok=down_ok)
        except (CaxtonError, click.ClickException) as exc:
            message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
            node.status, node.error = "failed", message
            run.phase, run.error = "failed", f"{node.node_id}: {message}"
            run.save(path)
            raise UpgradeError(f"stopped at node {node.node_id}: {message}") from None
        say(f"{node.node_id}: done in {node.seconds:g}s (version {version})")
        if node is run.nodes[0] and run.canary_duration and run.kind == "upgrade":
            _canary(run, path, cluster, node, say)


def _canary(
    run: Run, path: Path, cluster: Cluster, node: NodeRun, say: Callable[[str], None]
) -> None:
    """Watch the first upgraded node for ``canary_duration`` before the others."""
    run.canary_healthy_since = time.time()
    run.save(path)
    say(f"{node.node_id}: canary, watching it for {run.canary_duration:g}s")
    deadline = time.monotonic() + run.canary_duration
    while time.monotonic() < deadline:
        if _status(cluster.members(node.node_id), node.node_id) != "alive":
            raise UpgradeError(f"canary {node.node_id} is no longer alive; stopping the upgrade")
        time.sleep(min(1.0, run.canary_duration))


def _plan(
    client: ApiClient, kind: str, version: str | None, reason: str, options: RunOptions
) -> Run:
    cluster = Cluster(client, [client.url])
    members = cluster.members()
    down = [m["node_id"] for m in members if m["status"] not in ("alive", "left")]
    if down:
        raise UpgradeError(
            f"nodes {', '.join(down)} are not alive: a rolling {kind} needs every member "
            f"up (bring them back, or remove them with caxton cluster remove --force)"
        )
    alive = [m for m in members if m["status"] == "alive"]
    if options.only:
        unknown = sorted(set(options.only) - {m["node_id"] for m in alive})
        if unknown:
            raise UpgradeError(f"unknown or not alive: {', '.join(unknown)}")
        alive = [m for m in alive if m["node_id"] in options.only]
    runs = [
        NodeRun(
            m["node_id"],
            plain_version(str(m.get("version") or "")),
            version or plain_version(str(m.get("version") or "")),
            address=str(m.get("address") or ""),
        )
        for m in alive
    ]
    # the node whose API we were given goes last: the others are asked through it
    runs.sort(
        key=lambda r: (next(m for m in alive if m["node_id"] == r.node_id)["local"], r.node_id)
    )
    return Run(
        kind,
        version or "",
        reason,
        options.command,
        str(Path(options.data_dir).resolve()) if options.data_dir else "",
        sorted(set(cluster.node_urls.values())),
        runs,
    )


def _fresh(path: Path) -> None:
    if path.exists():
        previous = Run.load(path)
        if previous.phase in ("running", "rolling-back"):
            raise UpgradeError(
                f"a rolling {previous.kind} is already recorded as {previous.phase} in {path}; "
                f"see caxton cluster upgrade status (or remove {path} if it is not running)"
            )


# -------------------------------------------------------------------------
# Commands
# -------------------------------------------------------------------------


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--command",
            "command_template",
            default="",
            metavar="TEMPLATE",
            help="How a stopped node is started again, run by sh: {node}, {version}, "
            "{config}, {join}, {address}, {host} (default for a 'cluster up' cluster: its "
            "own 'caxton server start').",
        ),
        click.option(
            "--data-dir",
            default=None,
            type=click.Path(file_okay=False),
            help="The directory of a cluster made by 'caxton cluster up'.",
        ),
        click.option(
            "--drain-timeout",
            default="60s",
            callback=_duration,
            show_default=True,
            help="How long each node's agents may take to move off.",
        ),
        click.option(
            "--rejoin-timeout",
            default="120s",
            callback=_duration,
            show_default=True,
            help="How long a restarted node may take to be alive and read-write.",
        ),
        click.option("--node", "only", multiple=True, help="Only these nodes (repeatable)."),
        click.option(
            "--state",
            default=None,
            type=click.Path(dir_okay=False),
            help="The state file (default: upgrade.json in --data-dir, or "
            "$XDG_STATE_HOME/caxton/upgrade.json).",
        ),
    ]

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        command_template: str,
        data_dir: str | None,
        drain_timeout: float,
        rejoin_timeout: float,
        only: tuple[str, ...],
        state: str | None,
        as_json: bool,
        **kwargs: Any,
    ) -> Any:
        bundle = RunOptions(
            command_template, data_dir, drain_timeout, rejoin_timeout, only, state, as_json
        )
        return command(*args, options=bundle, **kwargs)

    decorated: Callable[..., Any] = json_option(wrapper)
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def _report(run: Run, as_json: bool) -> None:
    if as_json:
        emit_json(asdict(run))
        return
    if run.phase == "rolled-back":
        back = [n for n in run.nodes if n.status == "rolled-back"]
        click.echo(f"Rollback done: {len(back)} nodes back at the version they ran before")
        return
    word = "upgrade" if run.kind == "upgrade" else "restart"
    target = f" to {run.version}" if run.version else ""
    click.echo(f"Rolling {word}{target} {run.phase}: {len(_done(run))}/{len(run.nodes)} nodes")


def _done(run: Run) -> list[NodeRun]:
    return [n for n in run.nodes if n.status == "done"]


@click.command("rolling-restart")
@click.option("--reason", default="", help="Why (recorded with the run, e.g. cert-rotation).")
@_common
@api_options
def rolling_restart(client: ApiClient, reason: str, options: RunOptions) -> None:
    """Restart every node, one at a time: drain, stop, start, wait, move agents back."""
    _fresh(options.path)
    run = _plan(client, "restart", None, reason, options)
    run.save(options.path)
    nodes = iter(run.nodes)
    _execute(run, client, nodes, options, version_of=lambda n: n.from_version, command=run.command)
    _finish(run, options, "completed")


def _start_upgrade(
    client: ApiClient, version: str, canary_duration: float | None, options: RunOptions
) -> None:
    _fresh(options.path)
    target = plain_version(version)
    run = _plan(client, "upgrade", target, "", options)
    run.canary_duration = canary_duration or 0.0
    run.save(options.path)
    _execute(
        run, client, iter(run.nodes), options, version_of=lambda n: target, command=run.command
    )
    _finish(run, options, "completed")


def _finish(run: Run, options: RunOptions, phase: str) -> None:
    run.phase = phase
    run.save(options.path)
    _report(run, options.as_json)


_version_option = click.option(
    "--version", "version", metavar="V", help="The release to run (v1.2.0 or 1.2.0)."
)
_canary_option = click.option(
    "--canary-duration",
    default=None,
    callback=_duration,
    help="Watch the first upgraded node this long before the others (e.g. 10m).",
)


@click.group("upgrade", invoke_without_command=True)
@_version_option
@_canary_option
@_common
@api_options
def cluster_upgrade(
    client: ApiClient, version: str | None, canary_duration: float | None, options: RunOptions
) -> None:
    """Rolling upgrade: start, status, rollback ('upgrade --version V' is 'upgrade start')."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    if not version:
        raise click.UsageError("give --version V (or a subcommand: start, status, rollback)")
    _start_upgrade(client, version, canary_duration, options)


@cluster_upgrade.command("start")
@click.option(
    "--version", "version", required=True, metavar="V", help="The release to run (v1.2.0 or 1.2.0)."
)
@_canary_option
@_common
@api_options
def upgrade_start(
    client: ApiClient, version: str, canary_duration: float | None, options: RunOptions
) -> None:
    """Upgrade every node to V, one at a time; stop and report on the first failure."""
    _start_upgrade(client, version, canary_duration, options)


@cluster_upgrade.command("status")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False))
@click.option("--state", default=None, type=click.Path(dir_okay=False))
@json_option
@api_options
def upgrade_status(
    client: ApiClient, data_dir: str | None, state: str | None, as_json: bool
) -> None:
    """Phase, progress and each node's version, from the state file and the members."""
    run = Run.load(state_path(data_dir, state))
    try:
        members = {
            m["node_id"]: m for m in client.request("GET", "/api/v1/cluster/members")["members"]
        }
    except click.ClickException:
        members = {}
    if as_json:
        emit_json({**asdict(run), "members": members})
        return
    phase = {
        "running": f"Rolling {run.kind}",
        "completed": "Completed",
        "failed": "Failed",
        "rolling-back": "Rolling back",
        "rolled-back": "Rolled back",
    }.get(run.phase, run.phase)
    target = run.version
    at_target = sum(
        1
        for m in members.values()
        if target and plain_version(str(m.get("version") or "")) == target
    )
    word = "upgraded" if run.kind == "upgrade" else "restarted"
    done = len(_done(run)) if run.kind == "restart" or not members else at_target
    lines = [f"PHASE: {phase}", f"PROGRESS: {done}/{len(run.nodes)} nodes {word}"]
    if run.canary_healthy_since and run.nodes:
        lines.append(
            f"CANARY: {run.nodes[0].node_id}, healthy for "
            f"{_ago(time.time() - run.canary_healthy_since)}"
        )
    timed = [n.seconds for n in run.nodes if n.status == "done" and n.seconds]
    left = [n for n in run.nodes if n.status != "done"]
    if run.phase == "running" and timed and left:
        lines.append(f"ETA: {_ago(sum(timed) / len(timed) * len(left))}")
    if run.error:
        lines.append(f"ERROR: {run.error}")
    click.echo("\n".join(lines))
    click.echo(
        render_table(
            ("NODE-ID", "FROM", "TO", "STEP", "RUNNING"),
            [
                (
                    n.node_id,
                    n.from_version or "-",
                    n.to_version or "-",
                    n.status,
                    members.get(n.node_id, {}).get("version") or "-",
                )
                for n in run.nodes
            ],
        )
    )


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds}s"


@cluster_upgrade.command("rollback")
@_common
@api_options
def upgrade_rollback(client: ApiClient, options: RunOptions) -> None:
    """Take the nodes already upgraded back to the version they ran, last first."""
    path = options.path
    run = Run.load(path)
    if run.kind != "upgrade":
        raise UpgradeError(f"the last run in {path} was a rolling {run.kind}, not an upgrade")
    touched = [
        n
        for n in run.nodes
        if n.status not in ("pending", "rolled-back") and n.from_version != n.to_version
    ]
    if not touched:
        raise UpgradeError("no node was upgraded: nothing to roll back")
    run.phase = "rolling-back"
    run.save(path)
    nodes = list(reversed(touched))
    for node in nodes:
        node.status = "pending"
    # a cluster up node goes back to the argv it ran; elsewhere the template again,
    # with {version} the version the node ran
    command = options.command or ("" if run.data_dir else run.command)
    _execute(
        run,
        client,
        iter(nodes),
        options,
        version_of=lambda n: n.from_version,
        command=command,
        down_ok=True,
    )
    for node in nodes:
        node.status = "rolled-back"
    _finish(run, options, "rolled-back")
