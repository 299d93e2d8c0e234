"""The plugin host: one per node, holding its pluggy manager and its loaded drivers.

Three mechanisms, kept apart (docs/plugins/index.md):

* drivers, one per kind, selected by entry-point name and loaded with stevedore's
  ``DriverManager`` (only the selected one is imported);
* the auth chain, several drivers in configured order (``NamedExtensionManager``);
* hook plugins, every installed one of group ``caxton.hooks``, registered with pluggy.

There is no module-level plugin manager: tests build as many hosts as they like, with
``use_entry_points=False`` to see only what they register themselves.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, cast

import pluggy
from stevedore import DriverManager, ExtensionManager, NamedExtensionManager
from stevedore.exception import NoMatches

from caxton import PROJECT_NAME, hookspecs
from caxton.config import Config, ConfigSection
from caxton.drivers import (
    AuthDriver,
    Driver,
    DriverContext,
    Membership,
    PartitionPolicy,
    PlacementStrategy,
    Sandbox,
    Transport,
)
from caxton.errors import CaxtonError, DriverNotFound, PluginError, first_line

log = logging.getLogger("caxton.plugins")

HOOKS_GROUP = "caxton.hooks"
DISABLED_ENV = "CAXTON_DISABLED_PLUGINS"
STRICT_ENV = "CAXTON_PLUGINS_STRICT"


# We report a missing driver ourselves (with the install hint), so stevedore stays quiet.
# Newer stevedore deprecates ``warn_on_missing_entrypoint`` for a callback.
_QUIET_ON_MISSING: dict[str, Any] = (
    {"on_missing_entrypoints_callback": lambda names: None}
    if "on_missing_entrypoints_callback" in inspect.signature(DriverManager.__init__).parameters
    else {"warn_on_missing_entrypoint": False}
)


def _forget_stevedore_cache(group: str) -> None:
    """Drop stevedore's process-wide list of ``group``'s entry points.

    stevedore keeps it in a class attribute for the life of the process; a host must see
    what is installed when it loads, like a fresh process would (several hosts, plugins
    installed by a test).
    """
    ExtensionManager.ENTRY_POINT_CACHE.pop(group, None)


@dataclass(frozen=True)
class Kind:
    """A driver kind: its config name, entry-point group and interface."""

    name: str
    group: str
    interface: type[Driver]
    #: Several drivers active in order (auth) instead of exactly one.
    chain: bool = False


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("sandbox", "caxton.sandbox", Sandbox),
        Kind("transport", "caxton.transport", Transport),
        Kind("membership", "caxton.membership", Membership),
        Kind("placement", "caxton.placement", PlacementStrategy),
        Kind("partition_policy", "caxton.partition_policy", PartitionPolicy),
        Kind("auth", "caxton.auth", AuthDriver, chain=True),
    )
}

#: Where the first-party drivers that core does not ship come from.
KNOWN_DISTRIBUTIONS: dict[tuple[str, str], str] = {
    ("transport", "tcp"): "caxton-transport-tcp",
    ("transport", "quic"): "caxton-transport-quic",
    ("sandbox", "wasmer"): "caxton-sandbox-wasmer",
    ("auth", "jwt"): "caxton-auth-jwt",
}


@dataclass
class PluginInfo:
    """One row of ``caxton plugins``."""

    kind: str
    name: str
    distribution: str | None
    version: str | None
    target: str
    hooks: list[str] = field(default_factory=list)
    selected: bool = False
    blocked: bool = False
    broken: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "target": self.target,
            "hooks": self.hooks,
            "selected": self.selected,
            "blocked": self.blocked,
            "broken": self.broken,
        }


def _dist_of(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def describe_entry_point(ep: EntryPoint) -> str:
    name, version = _dist_of(ep)
    origin = f"{name} {version}" if name else ep.value
    return f"'{ep.name}' ({origin})"


def _names_module(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``exc`` says ``module_name`` itself (or its package) does not exist."""
    return exc.name is not None and (module_name + ".").startswith(exc.name + ".")


def _target_of(registered: type[Driver] | str) -> str:
    if isinstance(registered, str):
        return registered
    return f"{registered.__module__}:{registered.__qualname__}"


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line reports."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name


def parse_plugin_options(options: Iterable[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """Split ``--plugin`` values into (driver selections, hook modules, blocked names).

    ``transport=quic`` selects a driver (``auth=api-key,jwt`` sets the chain),
    ``no:NAME`` blocks a plugin, anything else is an importable hook-plugin module.
    """
    selections: dict[str, str] = {}
    modules: list[str] = []
    blocked: list[str] = []
    for option in options:
        option = option.strip()
        if option.startswith("no:"):
            blocked.append(option[3:])
        elif "=" in option:
            kind, _, name = option.partition("=")
            kind = kind.strip().replace("-", "_")
            if kind not in KINDS:
                known = ", ".join(sorted(KINDS))
                raise PluginError(
                    f"--plugin {option}: unknown plugin kind '{kind}' (kinds: {known})"
                )
            selections[kind] = name.strip()
        elif option:
            modules.append(option)
    return selections, modules, blocked


class PluginHost:
    """Everything pluggable on one node.

    ``use_entry_points=False`` ignores installed plugins entirely (drivers then come from
    ``register_driver``), which is how :mod:`caxton.testing` builds isolated nodes.
    """

    def __init__(
        self,
        *,
        use_entry_points: bool = True,
        blocked: Iterable[str] = (),
        strict: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.use_entry_points = use_entry_points
        self.strict = strict or env.get(STRICT_ENV, "").lower() in {"1", "true", "yes"}
        self.blocked = set(blocked) | {
            name.strip() for name in env.get(DISABLED_ENV, "").split(",") if name.strip()
        }
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        for name in self.blocked:
            self.pm.set_blocked(name)
        from caxton import builtin

        self.pm.register(builtin, name="caxton.builtin")
        self._test_drivers: dict[tuple[str, str], type[Driver] | str] = {}
        #: name -> (entry point or module name, error line) for hook plugins that failed
        self.broken: dict[str, tuple[str, str]] = {}
        #: kind -> name (or names for the auth chain) of the loaded drivers
        self.selected: dict[str, str | list[str]] = {}
        self.drivers: dict[str, Any] = {}
        self._hook_entry_points: dict[str, EntryPoint] = {}

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    # -- hook plugins -------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a hook plugin object (a module, a class instance) directly.

        Raises :class:`PluginError` when a hookimpl does not fit its hookspec (an
        argument the spec does not have, a wrapper of a historic hook).
        """
        if name is not None and self.pm.is_blocked(name):
            return
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._invalid(exc, name)) from None

    def _invalid(self, exc: pluggy.PluginValidationError, name: str | None) -> str:
        text = str(exc)
        plugin = name or self.pm.get_name(exc.plugin) or repr(exc.plugin)
        hook = re.search(r"hook '(\w+)'", text)
        extra = re.search(r"Argument\(s\) (\{.*?\})", text)
        if hook and extra and hasattr(self.pm.hook, hook.group(1)):
            spec = getattr(self.pm.hook, hook.group(1)).spec
            accepted = ", ".join(spec.argnames) if spec else ""
            return (
                f"plugin '{plugin}' implements {hook.group(1)} with argument(s) "
                f"{extra.group(1)} that the hookspec does not have "
                f"(it offers: {accepted or 'no arguments'})"
            )
        detail = "; ".join(line.strip() for line in text.splitlines()[1:])
        return f"plugin '{plugin}' is invalid: {detail or text}"

    def load_hook_plugins(self, modules: Sequence[str] = ()) -> None:
        """Register installed hook plugins and importable ``modules``, then validate.

        A plugin that fails to import is recorded in :attr:`broken` and logged with its
        distribution and version; in strict mode it raises :class:`PluginError`. A
        hookimpl whose name matches no hookspec raises :class:`PluginError` always.
        """
        if self.use_entry_points:
            for ep in entry_points(group=HOOKS_GROUP):
                if ep.name in self.blocked or ep.name in self.broken:
                    continue
                if self.pm.has_plugin(ep.name):
                    continue
                self._hook_entry_points[ep.name] = ep
                try:
                    plugin = ep.load()
                except Exception as exc:  # a plugin's import may raise anything
                    self._broken(ep.name, describe_entry_point(ep), exc)
                    continue
                self.register(plugin, name=ep.name)
        for module_name in modules:
            if module_name in self.blocked or module_name in self.broken:
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                if isinstance(exc, ModuleNotFoundError) and _names_module(exc, module_name):
                    raise PluginError(
                        f"--plugin {module_name}: no module named '{module_name}' "
                        f"(is it on PYTHONPATH?)"
                    ) from None
                self._broken(module_name, f"module '{module_name}'", exc)
                continue
            if not self.pm.is_registered(module):
                self.register(module, name=module_name)
        self.check_hooks()

    def block(self, names: Iterable[str]) -> None:
        """Block plugins from now on; a hook plugin already registered is unregistered.

        Used for blocklists known only once the config is read (``plugins.disabled``).
        """
        for name in names:
            self.blocked.add(name)
            self.broken.pop(name, None)
            self.pm.set_blocked(name)

    def enforce_strict(self) -> None:
        """In strict mode, raise :class:`PluginError` for the first broken hook plugin.

        For strictness known only once the config is read (``plugins.strict``).
        """
        if self.strict and self.broken:
            origin, line = next(iter(self.broken.values()))
            raise PluginError(f"plugin {origin} failed to load: {line} (strict mode)")

    def _broken(self, name: str, origin: str, exc: BaseException) -> None:
        line = error_line(exc)
        self.broken[name] = (origin, line)
        message = f"plugin {origin} failed to load: {line}"
        if self.strict:
            raise PluginError(message + " (strict mode)")
        log.warning("%s; continuing without it (use --plugin no:%s to silence)", message, name)

    def check_hooks(self) -> None:
        """Fail on a hookimpl that matches no hookspec (a misspelt hook name).

        Raises :class:`PluginError` naming the plugin, the hook and the closest hookspec.
        pluggy's ``optionalhook=True`` opts an implementation out of the check.
        """
        known = sorted(
            name
            for name in vars(self.pm.hook)
            if not name.startswith("_") and getattr(self.pm.hook, name).has_spec()
        )
        for name in sorted(vars(self.pm.hook)):
            caller = getattr(self.pm.hook, name)
            if name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise PluginError(
                    f"plugin '{impl.plugin_name}' implements unknown hook '{name}'{hint}"
                )

    def call_hook(self, name: str, **kwargs: Any) -> Any:
        """Call hook ``name``; an implementation that raises is reported by plugin name.

        A :class:`~caxton.errors.CaxtonError` passes through unchanged; any other
        exception becomes :class:`PluginError` ("plugin 'x' failed in caxton_...:
        ValueError: ..."), chained to the original.
        """
        try:
            return getattr(self.pm.hook, name)(**kwargs)
        except CaxtonError:
            raise
        except Exception as exc:
            culprit = self._raised_in(name, exc)
            who = f"plugin '{culprit}'" if culprit else "a plugin"
            raise PluginError(f"{who} failed in {name}: {error_line(exc)}") from exc

    def _raised_in(self, name: str, exc: BaseException) -> str | None:
        """The plugin whose implementation of ``name`` is on ``exc``'s traceback."""
        caller: pluggy.HookCaller = getattr(self.pm.hook, name)
        codes: dict[object, str] = {
            getattr(impl.function, "__code__", None): impl.plugin_name
            for impl in caller.get_hookimpls()
        }
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code in codes:
                return codes[tb.tb_frame.f_code]
            tb = tb.tb_next
        return None

    def hooks_of(self, plugin: object) -> list[str]:
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ())

    # -- drivers ------------------------------------------------------------------

    def register_driver(self, kind: str, name: str, cls: type[Driver] | str) -> None:
        """Make a driver selectable without an entry point (tests, embedding).

        ``cls`` is the driver class, or an entry-point style target
        ``"package.module:Class"`` imported only when the driver is selected.
        """
        self._kind(kind)
        self._test_drivers[(kind, name)] = cls

    def available(self, kind: str) -> list[str]:
        """Names of the drivers of ``kind`` that could be selected (not blocked)."""
        group = self._kind(kind).group
        names = {n for (k, n) in self._test_drivers if k == kind}
        if self.use_entry_points:
            names |= {ep.name for ep in entry_points(group=group)}
        return sorted(names - self.blocked)

    def driver_class(self, kind: str, name: str) -> type[Driver]:
        """Import and return the driver class ``name`` of ``kind`` (only that one)."""
        spec = self._kind(kind)
        if name in self.blocked:
            raise DriverNotFound(
                f"{kind} driver '{name}' is blocked (--plugin no:{name} or ${DISABLED_ENV})"
            )
        registered = self._test_drivers.get((kind, name))
        if isinstance(registered, str):
            cls = self._load_target(spec, name, registered)
        elif registered is not None:
            cls = registered
        else:
            cls = self._load_with_stevedore(spec, name)
        if not (isinstance(cls, type) and issubclass(cls, spec.interface)):
            raise PluginError(
                f"{kind} driver '{name}' ({cls!r}) does not implement "
                f"{spec.interface.__module__}.{spec.interface.__name__}"
            )
        return cls

    @staticmethod
    def _load_target(spec: Kind, name: str, target: str) -> type[Driver]:
        try:
            loaded: type[Driver] = EntryPoint(name, target, spec.group).load()
        except Exception as exc:  # a driver's import may raise anything
            raise PluginError(
                f"{spec.name} driver '{name}' ({target}) failed to load: {error_line(exc)}"
            ) from None
        return loaded

    def _load_with_stevedore(self, spec: Kind, name: str) -> type[Driver]:
        failures: list[str] = []

        def on_failure(_manager: object, ep: EntryPoint, exc: BaseException) -> None:
            # stevedore hands back its cached entry point, which lacks ``dist``.
            full = next(iter(entry_points(group=spec.group, name=ep.name)), ep)
            failures.append(f"{describe_entry_point(full)} failed to load: {error_line(exc)}")

        # Checked here, not left to stevedore, which would also log its own warning.
        if not self.use_entry_points or not entry_points(group=spec.group, name=name):
            raise self._not_found(spec, name)
        try:
            _forget_stevedore_cache(spec.group)
            with warnings.catch_warnings():
                # DriverManager does not pass on_missing_entrypoints_callback on, so the
                # older flag (deprecated in stevedore 5.5) is the one that silences its
                # "Could not load" log line; on_failure reports the failure instead.
                warnings.simplefilter("ignore", DeprecationWarning)
                manager: DriverManager[type[Driver]] = DriverManager(
                    namespace=spec.group,
                    name=name,
                    invoke_on_load=False,
                    on_load_failure_callback=on_failure,
                    warn_on_missing_entrypoint=False,
                )
        except NoMatches:
            if failures:
                raise PluginError(f"{spec.name} driver {failures[0]}") from None
            raise self._not_found(spec, name) from None
        except RuntimeError as exc:  # several distributions claim the same name
            raise PluginError(f"{spec.name} driver '{name}': {exc}") from None
        # invoke_on_load=False: stevedore hands back the loaded class itself.
        return cast("type[Driver]", manager.driver)

    def _not_found(self, spec: Kind, name: str) -> DriverNotFound:
        installed = ", ".join(self.available(spec.name)) or "none"
        dist = KNOWN_DISTRIBUTIONS.get((spec.name, name))
        hint = (
            f"; install it with: pip install {dist}"
            if dist
            else f"; a plugin must publish it in the entry-point group '{spec.group}'"
        )
        return DriverNotFound(
            f"{spec.name} driver '{name}' is not installed (installed {spec.name} drivers: "
            f"{installed}){hint}"
        )

    def create_driver(
        self,
        kind: str,
        name: str,
        config: Config,
        context: DriverContext,
        section: Mapping[str, Any] | None = None,
    ) -> Any:
        """Load, configure, instantiate and register the driver ``name`` of ``kind``.

        The driver's own config section (its ``config_section`` attribute) is validated
        against the loaded configuration first; ``section`` overrides the values passed.
        """
        cls = self.driver_class(kind, name)
        values = self.driver_config(cls, config) if section is None else dict(section)
        try:
            driver = cls(values, context)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{kind} driver '{name}' failed to start: {error_line(exc)}") from exc
        self._register_driver_hooks(kind, name, driver)
        if self._kind(kind).chain:
            chain = self.selected.setdefault(kind, [])
            assert isinstance(chain, list)
            chain.append(name)
            self.drivers.setdefault(kind, []).append(driver)
        else:
            self.selected[kind] = name
            self.drivers[kind] = driver
        return driver

    def create_chain(
        self, kind: str, names: Sequence[str], config: Config, context: DriverContext
    ) -> list[Any]:
        """Instantiate a chain kind (auth) in ``names`` order."""
        if not self._kind(kind).chain:
            raise PluginError(f"{kind} is not a chain kind")
        missing = [n for n in names if (kind, n) not in self._test_drivers]
        if missing and self.use_entry_points:
            # Fail early on names that no entry point provides, with the install hint.
            _forget_stevedore_cache(self._kind(kind).group)
            _forget_stevedore_cache(self._kind(kind).group)
            manager: NamedExtensionManager[type[Driver]] = NamedExtensionManager(
                namespace=self._kind(kind).group,
                names=missing,
                name_order=True,
                # A chain member that fails to import is reported by create_driver below.
                on_load_failure_callback=lambda _manager, _ep, _exc: None,
                **_QUIET_ON_MISSING,
            )
            found = {ep.name for ep in manager.list_entry_points()}
            for name in missing:
                if name not in found:
                    raise self._not_found(self._kind(kind), name)
        self.drivers[kind] = []
        self.selected[kind] = []
        return [self.create_driver(kind, name, config, context) for name in names]

    @staticmethod
    def driver_config(cls: type[Driver], config: Config) -> dict[str, Any]:
        """The values of driver class ``cls``'s own config section, validated (declaring
        the section on ``config`` first); ``{}`` for a driver without one."""
        section: ConfigSection | None = cls.config_section
        if section is None:
            return {}
        config.add_section(section)
        return dict(config[section.path])

    def _register_driver_hooks(self, kind: str, name: str, driver: object) -> None:
        # A driver may implement hooks too; register it when it has any.
        has_hooks = any(
            getattr(getattr(driver, attr, None), PROJECT_NAME + "_impl", None) is not None
            for attr in dir(driver)
            if attr.startswith("caxton_")
        )
        if has_hooks:
            self.register(driver, name=f"{kind}:{name}")
            self.check_hooks()

    def _kind(self, kind: str) -> Kind:
        try:
            return KINDS[kind]
        except KeyError:
            raise PluginError(
                f"unknown plugin kind '{kind}' (kinds: {', '.join(sorted(KINDS))})"
            ) from None

    # -- listing ------------------------------------------------------------------

    def plugin_section_names(self) -> list[str]:
        """Names whose config sections may appear in a file before their plugin loads."""
        names = {n for (_k, n) in self._test_drivers}
        if self.use_entry_points:
            for spec in KINDS.values():
                names |= {ep.name for ep in entry_points(group=spec.group)}
            names |= {ep.name for ep in entry_points(group=HOOKS_GROUP)}
        return sorted(names)

    def describe(
        self, selection: Mapping[str, str | Sequence[str]] | None = None
    ) -> list[PluginInfo]:
        """Every discovered plugin: drivers of each kind and hook plugins.

        Driver classes are imported to report the hooks they implement and whether they
        are broken; nothing is instantiated.
        """
        selection = dict(self.selected) if selection is None else dict(selection)
        rows: list[PluginInfo] = []
        for spec in KINDS.values():
            chosen = selection.get(spec.name)
            chosen_names = {chosen} if isinstance(chosen, str) else set(chosen or ())
            eps = (
                {ep.name: ep for ep in entry_points(group=spec.group)}
                if self.use_entry_points
                else {}
            )
            names = sorted(set(eps) | {n for (k, n) in self._test_drivers if k == spec.name})
            for name in names:
                ep = eps.get(name)
                dist, version = _dist_of(ep) if ep else (None, None)
                info = PluginInfo(
                    kind=spec.name,
                    name=name,
                    distribution=dist,
                    version=version,
                    target=ep.value if ep else _target_of(self._test_drivers[(spec.name, name)]),
                    selected=name in chosen_names,
                    blocked=name in self.blocked,
                )
                try:
                    cls = self.driver_class(spec.name, name) if not info.blocked else None
                except PluginError as exc:
                    info.broken = str(exc)
                else:
                    if cls is not None:
                        info.hooks = sorted(
                            attr
                            for attr in dir(cls)
                            if attr.startswith("caxton_")
                            and getattr(getattr(cls, attr), PROJECT_NAME + "_impl", None)
                        )
                rows.append(info)
        rows.extend(self._describe_hook_plugins())
        return rows

    def _describe_hook_plugins(self) -> list[PluginInfo]:
        rows: list[PluginInfo] = []
        seen: set[str] = set()
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue  # blocked: listed with the entry points below
            if name.split(":")[0] in KINDS or name.startswith("caxton."):
                continue  # drivers are listed with their kind; core's builtins are not plugins
            ep = self._hook_entry_points.get(name)
            dist, version = _dist_of(ep) if ep else (None, None)
            target = (
                ep.value
                if ep
                else (plugin.__name__ if isinstance(plugin, ModuleType) else repr(plugin))
            )
            rows.append(
                PluginInfo("hooks", name, dist, version, target, self.hooks_of(plugin), True)
            )
            seen.add(name)
        for name, (origin, error) in self.broken.items():
            ep = self._hook_entry_points.get(name)
            dist, version = _dist_of(ep) if ep else (None, None)
            rows.append(
                PluginInfo(
                    "hooks",
                    name,
                    dist,
                    version,
                    ep.value if ep else origin,
                    selected=False,
                    broken=error,
                )
            )
            seen.add(name)
        if self.use_entry_points:
            for ep in entry_points(group=HOOKS_GROUP):
                if ep.name not in seen:
                    dist, version = _dist_of(ep)
                    rows.append(
                        PluginInfo(
                            "hooks",
                            ep.name,
                            dist,
                            version,
                            ep.value,
                            blocked=ep.name in self.blocked,
                        )
                    )
        return rows
