"""A Caxton node: the plugin host, the drivers it selected, and the services they power.

:func:`build_node` turns config and ``--plugin`` options into a :class:`Node`;
``await node.start()`` brings it up in a fixed order and ``await node.stop()`` takes it
down in reverse. Each step is a resource on an :class:`contextlib.AsyncExitStack`, so a
failure half-way through closes exactly what was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caxton import __version__, systemd
from caxton.config import Config, load_config
from caxton.datadir import DataDirLock
from caxton.diagnostics.recorder import DiagnosticsRecorder
from caxton.drivers import DriverContext, ResourceLimits
from caxton.errors import CaxtonError, ConfigError, PluginError
from caxton.http_stats import HttpStats
from caxton.plugins import PluginHost, error_line, parse_plugin_options
from caxton.units import parse_address

if TYPE_CHECKING:
    from caxton.backup.service import BackupService
    from caxton.emergency import EmergencyState

log = logging.getLogger("caxton.node")

#: ``--plugin kind=name`` writes these config keys.
SELECTION_KEYS = {
    "sandbox": "plugins.sandbox",
    "transport": "plugins.transport",
    "membership": "plugins.membership",
    "placement": "plugins.placement",
    "partition_policy": "plugins.partition_policy",
    "auth": "plugins.auth",
}


def build_host_and_config(
    config_path: str | Path | None = None,
    *,
    plugin_options: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    use_entry_points: bool = True,
    host: PluginHost | None = None,
) -> tuple[PluginHost, Config]:
    """Load hook plugins first (they may declare config sections), then the config."""
    selections, modules, blocked = parse_plugin_options(plugin_options)
    flags: dict[str, Any] = dict(overrides or {})
    for kind, name in selections.items():
        flags[SELECTION_KEYS[kind]] = name.split(",") if kind == "auth" else name
    if host is None:
        host = PluginHost(use_entry_points=use_entry_points, blocked=blocked, env=env)
    else:
        host.block(blocked)
    host.load_hook_plugins(modules)
    sections = [s for result in host.hook.caxton_config_sections() for s in (result or ())]
    config = load_config(
        config_path,
        env=env,
        overrides=flags,
        extra_sections=sections,
        plugin_section_names=host.plugin_section_names(),
    )
    host.block(config["plugins"]["disabled"])
    host.strict = host.strict or config["plugins"]["strict"]
    host.enforce_strict()
    host.load_hook_plugins([m for m in config["plugins"]["modules"] if not host.pm.has_plugin(m)])
    host.hook.caxton_configure.call_historic(kwargs={"config": config})
    return host, config


def build_node(
    config_path: str | Path | None = None,
    *,
    plugin_options: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    bootstrap: bool = False,
    join: Sequence[str] = (),
    join_token: str | None = None,
) -> Node:
    host, config = build_host_and_config(
        config_path, plugin_options=plugin_options, overrides=overrides, env=env
    )
    return Node(config, host, bootstrap=bootstrap, join=join, join_token=join_token)


def is_loopback(host: str) -> bool:
    if host in {"localhost", ""}:
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Node:
    """One Caxton node. Attributes are ``None`` until :meth:`start` sets them up."""

    def __init__(
        self,
        config: Config,
        host: PluginHost,
        *,
        bootstrap: bool = False,
        join: Sequence[str] = (),
        join_token: str | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.hook = host.hook
        self.node_id: str = config["node"]["id"] or socket.gethostname()
        self.data_dir = Path(config["node"]["data_dir"]).expanduser()
        self.bootstrap = bootstrap
        self.join_addresses = list(join) or list(config["coordination.cluster"]["seeds"])
        #: Enrols this node with the cluster CA (caxton.security.node_tls); never logged.
        self.join_token = join_token
        self.version = __version__
        self.state = "created"
        self.started_at: float | None = None
        self.context = DriverContext(
            node_id=self.node_id,
            data_dir=self.data_dir,
            hook=host.hook,
            services={"node": self},
            logger=logging.getLogger(f"caxton.node.{self.node_id}"),
        )
        self.sandbox: Any = None
        self.store: Any = None
        self.router: Any = None
        self.agents: Any = None
        self.transport: Any = None
        self.membership: Any = None
        self.placement: Any = None
        self.partition_policy: Any = None
        self.cluster: Any = None
        self.backups: BackupService | None = None
        self.emergency: EmergencyState | None = None
        #: Crash and log records for the diagnostic commands (caxton.diagnostics).
        self.diagnostics: DiagnosticsRecorder | None = None
        self.auth_chain: list[Any] = []
        self.api_address: tuple[str, int] | None = None
        self.metrics_address: tuple[str, int] | None = None
        #: What the REST API served (the metrics read it).
        self.http_stats = HttpStats()
        #: OpenTelemetry tracing (caxton.tracing) when observability.enable_tracing.
        self.tracing: Any = None
        self.cluster_address: tuple[str, int] | None = None
        #: Reloads the cluster TLS material on change or SIGHUP (caxton.security.node_tls).
        self.tls_reloader: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._stopped = asyncio.Event()
        self._data_dir_lock: DataDirLock | None = None

    # -- configuration helpers ----------------------------------------------------

    @property
    def clustered(self) -> bool:
        return bool(
            self.bootstrap
            or self.join_addresses
            or self.config["coordination"]["cluster_enabled"]
            or self.config["coordination.cluster"]["discovery"] == "dns"
        )

    def default_limits(self) -> ResourceLimits:
        runtime = self.config["runtime"]
        return ResourceLimits(
            max_memory_bytes=runtime["max_memory_per_agent"],
            max_fuel=runtime["default_max_fuel"],
            max_execution_time_ms=int(runtime["default_execution_time"] * 1000),
            max_message_bytes=runtime["max_message_size"],
        )

    def limit_ceiling(self) -> ResourceLimits:
        runtime = self.config["runtime"]
        return ResourceLimits(
            max_memory_bytes=runtime["wasm_memory_limit"],
            max_fuel=runtime["max_fuel_limit"],
            max_execution_time_ms=int(runtime["execution_timeout"] * 1000),
            max_message_bytes=runtime["max_message_size"],
        )

    def check_exposure(self) -> None:
        """Refuse a non-loopback API without auth unless explicitly opted in."""
        host, _port = parse_address(self.config["networking"]["bind_address"])
        security = self.config["security"]
        if is_loopback(host) or security["auth_enabled"] or security["allow_insecure_remote"]:
            return
        raise ConfigError(
            f"refusing to serve the API on {host} without authentication: set "
            f"security.auth_enabled = true, or bind to 127.0.0.1, or opt in with "
            f"security.allow_insecure_remote = true"
        )

    def used_driver_kinds(self) -> list[str]:
        """Kinds whose selected driver this node needs.

        Sandbox, placement and partition policy always; transport and membership when
        the node clusters; auth when it is enabled; and any kind chosen explicitly (by
        file, environment or ``--plugin``), so a typo there never goes unnoticed.
        """
        kinds = ["sandbox", "placement", "partition_policy"]
        if self.clustered:
            kinds += ["transport", "membership"]
        if self.config["security"]["auth_enabled"]:
            kinds.append("auth")
        for kind in SELECTION_KEYS:
            if kind not in kinds and self.config.sources.get(SELECTION_KEYS[kind]) != "default":
                kinds.append(kind)
        return kinds

    def check_drivers(self) -> None:
        """Fail before anything starts if a needed driver is missing, blocked or broken,
        or if its config section is invalid; validated sections join :attr:`config`.

        Raises :class:`~caxton.errors.DriverNotFound` (naming the installed drivers and
        the package to install), :class:`~caxton.errors.PluginError` or
        :class:`~caxton.errors.ConfigError`.
        """
        plugins = self.config["plugins"]
        for kind in self.used_driver_kinds():
            selected = plugins[kind]
            for name in [selected] if isinstance(selected, str) else selected:
                section = self.host.driver_class(kind, name).config_section
                if section is not None:
                    self.config.add_section(section)
        from caxton.tracing import check_tracing

        check_tracing(self.config)

    def preflight(self) -> None:
        """Run the checks of :func:`caxton.preflight.preflight` (what ``config validate``
        reports): log a warning for each key that does nothing, raise the problems."""
        from caxton.preflight import preflight

        report = preflight(self)
        for warning in report.warnings:
            log.warning("config: %s", warning)
        report.raise_problems()

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self.state != "created":
            raise RuntimeError(f"node {self.node_id} already {self.state}")
        self.state = "starting"
        plugins = self.config["plugins"]
        try:
            self.preflight()
            lock = self._data_dir_lock = DataDirLock(self.data_dir)  # one node per directory
            lock.acquire()
            self._stack.callback(lock.release)
            if self.clustered or self.join_token:
                from caxton.security.node_tls import prepare_node_tls

                await prepare_node_tls(self, self.join_token)
            self.sandbox = await self._driver("sandbox", plugins["sandbox"])
            self.placement = await self._driver("placement", plugins["placement"])
            self.partition_policy = await self._driver(
                "partition_policy", plugins["partition_policy"]
            )
            self.host.call_hook("caxton_node_starting", node=self)
            await self._start_services()
            self.state = "running"
            self.started_at = time.time()
            self.host.call_hook("caxton_node_started", node=self)
        except BaseException:
            self.state = "failed"
            await self._stack.aclose()
            raise
        log.info(
            "node %s running (caxton %s); plugins: %s",
            self.node_id,
            __version__,
            ", ".join(
                f"{k}={v if isinstance(v, str) else ','.join(v)}"
                for k, v in sorted(self.host.selected.items())
            ),
        )

    async def _driver(self, kind: str, name: str) -> Any:
        driver = self.host.create_driver(kind, name, self.config, self.context)
        await self.start_driver(kind, name, driver)
        self.context.services[kind] = driver
        return driver

    async def start_driver(self, kind: str, name: str, driver: Any) -> None:
        """Start a created driver and close it with the node.

        A failure that is not a :class:`CaxtonError` becomes a one-line
        :class:`PluginError` naming the driver.
        """
        # close() must be safe after a failed start(): it releases what start() got.
        self._stack.push_async_callback(driver.close)
        try:
            await driver.start()
        except CaxtonError:
            raise
        except Exception as exc:
            raise PluginError(f"{kind} driver '{name}' failed to start: {error_line(exc)}") from exc

    async def _start_services(self) -> None:
        from caxton.agents import AgentManager
        from caxton.agents.commit import DeferredDurability
        from caxton.api import start_api
        from caxton.auth.chain import start_security
        from caxton.backup.service import BackupService, backup_directory
        from caxton.messaging import Router
        from caxton.metrics import start_metrics
        from caxton.store import Store
        from caxton.tracing import build_tracing

        self.tracing = build_tracing(self.node_id, self.config)
        if self.tracing is not None:
            tracing = self.tracing
            # Exporting the last spans may wait on the collector: not on the loop.
            self._stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
        coordination, storage = self.config["coordination"], self.config["storage"]
        messaging, runtime = self.config["messaging"], self.config["runtime"]
        self.store = Store(
            coordination["local_state_path"] or self.data_dir / "local.db",
            synchronous=storage["synchronous"],
            journal_mode=coordination["journal_mode"],
            cache_size=-(storage["page_cache_size"] // 1024),
            mmap_size=storage["mmap_size"],
            journal_size_limit=storage["wal_size_limit"],
            auto_vacuum=storage["auto_vacuum"].upper(),
            node_id=self.node_id,
            migration_backups=backup_directory(self.config, self.data_dir)
            if self.config["backup"]["before_migrations"]
            else None,
        )
        await self.store.open()
        self._stack.push_async_callback(self.store.close)
        self.context.services["store"] = self.store

        durable = messaging["enable_persistence"] or (
            messaging["delivery_guarantee"] == "at-least-once"
        )
        self.router = Router(
            node_id=self.node_id,
            queue_size=messaging["queue_size"],
            message_ttl=messaging["message_ttl"] or None,
            max_message_bytes=runtime["max_message_size"],
            dead_letter_limit=messaging["dead_letter_limit"],
            guarantee="at-least-once" if durable else "at-most-once",
            outbox=self.store if durable else None,
            conversation_store=self.store,
            observer=self._observer(),
            cleanup_interval=messaging["cleanup_interval"],
            batch_size=messaging["batch_size"],
            priority_routing=bool(messaging["priority_routing"]),
            dead_letter_sink=lambda letter: self.store.add_dead_letter(
                letter.message, letter.reason
            ),
        )
        if self.tracing is not None:
            self.router.trace_with(self.tracing)
        await self.router.start()
        from caxton.emergency import EmergencyState

        self.emergency = EmergencyState(self)
        self.router.admission = self.emergency.admission
        self._stack.push_async_callback(self.router.close)
        self.context.services["router"] = self.router
        self.auth_chain = await start_security(self, self._stack)

        extra_functions = [
            fn for result in self.hook.caxton_agent_host_functions(node=self) for fn in result or ()
        ]
        self.agents = AgentManager(
            node_id=self.node_id,
            sandbox=self.sandbox,
            router=self.router,
            store=self.store,
            hook=self.hook,
            node=self,
            max_agents=runtime["max_agents"],
            default_limits=self.default_limits(),
            limit_ceiling=self.limit_ceiling(),
            restart_policy=runtime["restart_policy"],
            restart_max=runtime["restart_max"],
            restart_backoff=runtime["restart_backoff"],
            extra_functions=extra_functions,
            durability=self.config["coordination.cluster"]["durability"],
            worker_threads=self.config["messaging"]["worker_threads"],
        )
        self.agents.tracing = self.tracing
        if self.clustered and self.agents.durability == "quorum":
            # The agents start before the cluster: until its quorum replication takes
            # over (caxton.cluster.ownership), nothing they change is acknowledged.
            self.agents.outputs.durability = DeferredDurability()
        await self.agents.start()
        self._stack.push_async_callback(self.agents.close)
        self.context.services["agents"] = self.agents

        self.diagnostics = DiagnosticsRecorder(self)
        self.diagnostics.start()
        self._stack.callback(self.diagnostics.close)

        self.backups = BackupService(self)
        await self.backups.start()
        self._stack.push_async_callback(self.backups.close)
        self.context.services["backups"] = self.backups

        self.api_address = await start_api(self, self._stack)
        self.metrics_address = await start_metrics(self, self._stack)
        if self.clustered:
            await self._start_cluster()

    async def _start_cluster(self) -> None:
        """Transport, then membership, then the cluster service (closed in reverse)."""
        from caxton.cluster import Cluster

        plugins = self.config["plugins"]
        self.transport = await self._driver("transport", plugins["transport"])
        from caxton.security.node_tls import serve_enrolment

        serve_enrolment(self, self.transport)
        from caxton.security.node_tls import start_tls_reloader

        self.tls_reloader = start_tls_reloader(self, self.transport)
        if self.tls_reloader is not None:
            self._stack.push_async_callback(self.tls_reloader.close)
        cluster = Cluster(self)
        self.cluster_address = await cluster.listen()
        self.membership = await self._driver("membership", plugins["membership"])
        self._stack.push_async_callback(cluster.close)
        self.cluster = cluster
        await cluster.start()

    def _observer(self) -> Any:
        """The router's observer, only when a plugin observes messages (zero cost otherwise)."""
        if not self.hook.caxton_message_observed.get_hookimpls():
            return None
        observe = self.hook.caxton_message_observed

        def observer(message: Any, event: str) -> None:
            observe(node=self, message=message, event=event)

        return observer

    async def stop(self) -> None:
        if self.state in {"stopping", "stopped"}:
            return
        self.state = "stopping"
        if self._data_dir_lock is not None:
            self._data_dir_lock.mark_stopping()  # a restart started meanwhile waits for us
        self.host.call_hook("caxton_node_stopping", node=self)
        await self._stack.aclose()
        self.state = "stopped"
        self.host.call_hook("caxton_node_stopped", node=self)
        self._stopped.set()

    def reload(self) -> None:
        """SIGHUP: read the cluster's TLS files again (new connections use them)."""
        if self.tls_reloader is None:
            log.info("node %s: SIGHUP ignored: no cluster TLS material to reload", self.node_id)
            return
        self.tls_reloader.reload("SIGHUP")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def run_until_signal(self) -> None:
        """Start, serve until SIGINT/SIGTERM (or :meth:`stop`), then stop cleanly."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop_requested.set)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        api = f"{self.api_address[0]}:{self.api_address[1]}" if self.api_address else "off"
        systemd.notify(f"READY=1\nSTATUS=node {self.node_id} serving, API {api}")
        waiter = asyncio.ensure_future(self._stopped.wait())
        signalled = asyncio.ensure_future(stop_requested.wait())
        tasks: set[asyncio.Future[Any]] = {waiter, signalled}
        interval = systemd.watchdog_interval()
        if interval is not None:
            tasks.add(asyncio.ensure_future(systemd.watchdog(interval)))
        await asyncio.wait({waiter, signalled}, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        log.info("node %s shutting down", self.node_id)
        systemd.notify(f"STOPPING=1\nSTATUS=node {self.node_id} stopping")
        await self.stop()
