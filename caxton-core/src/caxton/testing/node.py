"""Isolated nodes and hook recording for tests.

:class:`NodeFactory` builds as many nodes as a test wants in one process, each with its
own :class:`~caxton.plugins.PluginHost` (no globals), data directory and ports.
:class:`HookRecorder` records the hook calls of one or more hosts, like pytest's
``HookRecorder`` does for pytest's own hooks.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import pluggy

from caxton.drivers import Driver
from caxton.node import Node, build_host_and_config
from caxton.plugins import KINDS, PluginHost

__all__ = ["HookRecorder", "NodeFactory", "RecordedHookCall", "core_driver_targets"]

CORE_DISTRIBUTION = "caxton-core"

#: Config every factory-built node gets unless the test overrides it: ports picked by
#: the OS, so nodes never collide with each other or with a real node on 8080.
ISOLATED_DEFAULTS: Mapping[str, Any] = {
    "networking.bind_address": "127.0.0.1:0",
    "networking.metrics_address": "127.0.0.1:0",
    "coordination.cluster.bind_addr": "127.0.0.1:0",
}


# -------------------------------------------------------------------------
# Recording hook calls
# -------------------------------------------------------------------------


class RecordedHookCall:
    """One call of a hook: its name, keyword arguments and, once it returned, outcome.

    Arguments read as attributes: ``call.node``, ``call.member``.
    """

    def __init__(self, name: str, kwargs: Mapping[str, Any]) -> None:
        self.name = name
        self.kwargs = dict(kwargs)
        self.outcome: pluggy.Result[Any] | None = None

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["kwargs"][key]
        except KeyError:
            raise AttributeError(f"hook {self.name} was not called with '{key}'") from None

    @property
    def result(self) -> Any:
        """What the hook call returned (a list, or one value for ``firstresult`` hooks).

        Re-raises the exception the call raised; ``AssertionError`` while it runs.
        """
        if self.outcome is None:
            raise AssertionError(f"hook {self.name} has not returned yet")
        return self.outcome.get_result()

    @property
    def exception(self) -> BaseException | None:
        if self.outcome is None:
            raise AssertionError(f"hook {self.name} has not returned yet")
        return self.outcome.exception

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"<RecordedHookCall {self.name}({args})>"


def _matches(call: RecordedHookCall, expected: Mapping[str, Any]) -> bool:
    return all(key in call.kwargs and call.kwargs[key] == value for key, value in expected.items())


def _names(names: str | Iterable[str]) -> set[str]:
    return set(names.split()) if isinstance(names, str) else set(names)


class HookRecorder:
    """Records every hook call made on the plugin hosts it is attached to.

    ::

        recorder = HookRecorder(node.host)
        ...
        call = recorder.getcall("caxton_node_started")
        assert call.node is node

    Uses pluggy's ``add_hookcall_monitoring``; :meth:`finish_recording` (or leaving a
    ``with`` block) detaches it.
    """

    def __init__(self, target: PluginHost | pluggy.PluginManager | None = None) -> None:
        self._calls: list[RecordedHookCall] = []
        self._running: dict[int, RecordedHookCall] = {}
        self._undo: list[Any] = []
        if target is not None:
            self.attach(target)

    def attach(self, target: PluginHost | pluggy.PluginManager) -> None:
        """Start recording the hook calls of ``target`` too."""
        pm = target.pm if isinstance(target, PluginHost) else target

        def before(
            hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
        ) -> None:
            call = RecordedHookCall(hook_name, kwargs)
            self._calls.append(call)
            # pluggy hands ``after`` the same kwargs object: that pairs them up, also
            # when hooks nest or run in several threads at once.
            self._running[id(kwargs)] = call

        def after(
            outcome: pluggy.Result[Any],
            hook_name: str,
            hook_impls: Sequence[pluggy.HookImpl],
            kwargs: Mapping[str, Any],
        ) -> None:
            call = self._running.pop(id(kwargs), None)
            if call is not None:
                call.outcome = outcome

        self._undo.append(pm.add_hookcall_monitoring(before, after))

    def finish_recording(self) -> None:
        """Stop recording on every attached host; recorded calls are kept."""
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> HookRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish_recording()

    # -- queries ------------------------------------------------------------------

    def calls(self, names: str | Iterable[str] | None = None) -> list[RecordedHookCall]:
        """Recorded calls in call order; ``names`` (space-separated or a list) filters."""
        if names is None:
            return list(self._calls)
        wanted = _names(names)
        return [call for call in self._calls if call.name in wanted]

    def names(self) -> list[str]:
        """Names of the recorded calls, in call order (repeats included)."""
        return [call.name for call in self._calls]

    def getcall(self, name: str) -> RecordedHookCall:
        """The one call of ``name``; ``AssertionError`` when there are none or several."""
        found = self.calls(name)
        if len(found) != 1:
            raise AssertionError(
                f"expected exactly one call of {name}, got {len(found)}; "
                f"recorded: {self._summary()}"
            )
        return found[0]

    def popcall(self, name: str) -> RecordedHookCall:
        """Remove and return the first call of ``name`` (``AssertionError`` if none)."""
        for index, call in enumerate(self._calls):
            if call.name == name:
                del self._calls[index]
                return call
        raise AssertionError(f"no call of {name}; recorded: {self._summary()}")

    def assert_called(
        self, name: str, *, times: int | None = None, **kwargs: Any
    ) -> list[RecordedHookCall]:
        """Assert ``name`` was called (``times`` times, if given) with ``kwargs``.

        ``kwargs`` compare by equality against the call's arguments; only the calls that
        match all of them count. Returns the matching calls.
        """
        matching = [
            call
            for call in self.calls(name)
            if all(
                key in call.kwargs and call.kwargs[key] == value for key, value in kwargs.items()
            )
        ]
        described = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        if times is None and not matching:
            raise AssertionError(f"{described} was not called; recorded: {self._summary()}")
        if times is not None and len(matching) != times:
            raise AssertionError(
                f"{described} was called {len(matching)} times, expected {times}; "
                f"recorded: {self._summary()}"
            )
        return matching

    def assert_not_called(self, name: str) -> None:
        found = self.calls(name)
        if found:
            raise AssertionError(f"{name} was called {len(found)} times: {found!r}")

    def clear(self) -> None:
        self._calls.clear()

    def _summary(self) -> str:
        return ", ".join(self.names()) or "no hook calls"


# -------------------------------------------------------------------------
# Building nodes
# -------------------------------------------------------------------------


def core_driver_targets() -> dict[tuple[str, str], str]:
    """Core's own drivers, ``(kind, name) -> "module:Class"``, from its entry points.

    Lets a host that skips entry points still select core's defaults, without
    importing any of them until one is selected.
    """
    try:
        eps = distribution(CORE_DISTRIBUTION).entry_points
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return {}
    groups = {kind.group: kind.name for kind in KINDS.values()}
    return {(groups[ep.group], ep.name): ep.value for ep in eps if ep.group in groups}


class NodeFactory:
    """Builds isolated nodes for tests, in one process.

    Each node gets its own :class:`~caxton.plugins.PluginHost`, a data directory under
    ``base_dir``, OS-assigned ports (:data:`ISOLATED_DEFAULTS`) and an environment that
    is ``env`` (default: empty), not the test process's own, so ``CAXTON_*`` variables
    of the machine running the tests do not leak in.

    With ``use_entry_points=False`` (the default) installed plugins are invisible: the
    drivers are core's own (``core_drivers=True``) plus those given to
    :meth:`register_driver`, and the hook plugins those given to :meth:`register` or to
    :meth:`build`. With ``use_entry_points=True`` nodes see what a real node would.

    ::

        async with factory.node(config={"runtime.max_agents": 5}) as node:
            ...
    """

    def __init__(
        self,
        base_dir: str | Path,
        *,
        use_entry_points: bool = False,
        core_drivers: bool = True,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.use_entry_points = use_entry_points
        self.env: dict[str, str] = dict(env or {})
        #: Dotted config keys applied to every node (after :data:`ISOLATED_DEFAULTS`).
        self.config: dict[str, Any] = dict(config or {})
        self._drivers: dict[tuple[str, str], type[Driver] | str] = {}
        if core_drivers:
            self._drivers.update(core_driver_targets())
        self._plugins: list[tuple[object, str | None]] = []
        self._recorders: list[HookRecorder] = []
        self._counter = itertools.count(1)
        #: Every node built, in order.
        self.nodes: list[Node] = []

    def register_driver(self, kind: str, name: str, cls: type[Driver] | str) -> None:
        """Make a driver selectable on every node built from now on."""
        self._drivers[(kind, name)] = cls

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a hook plugin on every node built from now on."""
        self._plugins.append((plugin, name))

    def record(self, recorder: HookRecorder | None = None) -> HookRecorder:
        """Attach ``recorder`` (or a new one) to every host built from now on."""
        recorder = recorder if recorder is not None else HookRecorder()
        self._recorders.append(recorder)
        return recorder

    def host(
        self,
        *,
        use_entry_points: bool | None = None,
        plugins: Sequence[object] = (),
        blocked: Iterable[str] = (),
        strict: bool = False,
    ) -> PluginHost:
        """A fresh plugin host with the factory's drivers, plugins and recorders."""
        host = PluginHost(
            use_entry_points=self.use_entry_points
            if use_entry_points is None
            else use_entry_points,
            blocked=blocked,
            strict=strict,
            env=self.env,
        )
        for (kind, name), cls in self._drivers.items():
            host.register_driver(kind, name, cls)
        for plugin, plugin_name in [*self._plugins, *((p, None) for p in plugins)]:
            host.register(plugin, name=plugin_name or _plugin_name(plugin))
        for recorder in self._recorders:
            recorder.attach(host)
        return host

    def build(
        self,
        node_id: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        config_path: str | Path | None = None,
        plugins: Sequence[object] = (),
        plugin_options: Sequence[str] = (),
        use_entry_points: bool | None = None,
        strict: bool = False,
        bootstrap: bool = False,
        join: Sequence[str] = (),
    ) -> Node:
        """A configured node, not started. ``config`` holds dotted keys
        (``{"runtime.max_agents": 5}``) and wins over the factory's own."""
        node_id = node_id or f"node-{next(self._counter)}"
        overrides: dict[str, Any] = {
            **ISOLATED_DEFAULTS,
            "node.id": node_id,
            "node.data_dir": str(self.base_dir / node_id),
            **self.config,
            **(config or {}),
        }
        host = self.host(use_entry_points=use_entry_points, plugins=plugins, strict=strict)
        host, loaded = build_host_and_config(
            config_path,
            plugin_options=plugin_options,
            overrides=overrides,
            env=self.env,
            host=host,
        )
        node = Node(loaded, host, bootstrap=bootstrap, join=join)
        self.nodes.append(node)
        return node

    @contextlib.asynccontextmanager
    async def node(
        self,
        node_id: str | None = None,
        **options: Any,
    ) -> AsyncIterator[Node]:
        """Build (as :meth:`build`), start, yield, and always stop a node."""
        node = self.build(node_id, **options)
        await node.start()
        try:
            yield node
        finally:
            await node.stop()

    async def stop_all(self) -> None:
        """Stop every node built by this factory that is still running."""
        for node in reversed(self.nodes):
            if node.state == "running":
                await node.stop()


def _plugin_name(plugin: object) -> str | None:
    return plugin.__name__ if isinstance(plugin, ModuleType) else None
