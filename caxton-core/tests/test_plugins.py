"""The plugin host: drivers by name, hook plugins, blocking, strict mode, precise errors.

Plugins under test are real distributions: a ``*.dist-info`` directory with METADATA and
entry_points.txt next to their modules, on ``sys.path``, found by importlib.metadata and
stevedore exactly as a pip-installed plugin is.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import sys
import textwrap
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest

from caxton import hookimpl
from caxton.config import ConfigSection, Field, load_config
from caxton.drivers import (
    ClusterView,
    DriverContext,
    NodeLoad,
    PartitionDecision,
    PartitionMode,
    PartitionPolicy,
    PlacementRequest,
    PlacementStrategy,
)
from caxton.errors import ConfigError, DriverNotFound, PluginError
from caxton.node import build_host_and_config
from caxton.placement.strategies import LeastLoaded, RoundRobin
from caxton.plugins import KINDS, KNOWN_DISTRIBUTIONS, PluginHost, parse_plugin_options
from caxton.testing import HookRecorder, NodeFactory

_unique = itertools.count()


class Site:
    """A directory on sys.path where tests "install" distributions and modules."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.modules: list[str] = []

    def module(self, name: str, source: str) -> str:
        """Write an importable module (``pkg.mod`` makes the package too)."""
        parts = name.split(".")
        directory = self.path.joinpath(*parts[:-1])
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(1, len(parts)):
            init = self.path.joinpath(*parts[:i], "__init__.py")
            if not init.exists():
                init.write_text("")
        (directory / f"{parts[-1]}.py").write_text(textwrap.dedent(source))
        self.modules.append(parts[0])
        importlib.invalidate_caches()
        return name

    def distribution(
        self,
        name: str,
        version: str,
        entry_points: Mapping[str, Mapping[str, str]],
        modules: Mapping[str, str] = {},
    ) -> None:
        for module_name, source in modules.items():
            self.module(module_name, source)
        info = self.path / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{ep} = {target}" for ep, target in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()


@pytest.fixture(name="site")
def site_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    installed = Site(path)
    yield installed
    for name in list(sys.modules):
        if name.split(".")[0] in installed.modules:
            del sys.modules[name]


def unique(prefix: str) -> str:
    """Module names differ per test: sys.modules outlives a test."""
    return f"{prefix}_{next(_unique)}"


def config_for(host: PluginHost, **overrides: Any) -> Any:
    return load_config(
        env={}, overrides=overrides, plugin_section_names=host.plugin_section_names()
    )


def context(tmp_path: Path, host: PluginHost) -> DriverContext:
    return DriverContext(node_id="node-1", data_dir=tmp_path, hook=host.hook)


class Alphabetical(PlacementStrategy):
    def rank(self, request: PlacementRequest, candidates: Any) -> list[NodeLoad]:
        return sorted(candidates, key=lambda c: c.node_id)


# -------------------------------------------------------------------------
# --plugin options
# -------------------------------------------------------------------------


def test_parse_plugin_options() -> None:
    selections, modules, blocked = parse_plugin_options(
        [
            "transport=quic",
            "partition-policy=custom",
            "auth=api-key,jwt",
            "my_pkg.hooks",
            "no:noisy",
            " placement = zone-aware ",
        ]
    )
    assert selections == {
        "transport": "quic",
        "partition_policy": "custom",
        "auth": "api-key,jwt",
        "placement": "zone-aware",
    }
    assert modules == ["my_pkg.hooks"]
    assert blocked == ["noisy"]


def test_unknown_kind_in_plugin_option() -> None:
    with pytest.raises(PluginError) as info:
        parse_plugin_options(["transprt=quic"])
    assert str(info.value) == (
        "--plugin transprt=quic: unknown plugin kind 'transprt' (kinds: auth, membership, "
        "partition_policy, placement, sandbox, transport)"
    )


# -------------------------------------------------------------------------
# Drivers
# -------------------------------------------------------------------------


def test_registered_driver_selected_by_name(tmp_path: Path) -> None:
    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("placement", "alphabetical", Alphabetical)
    host.register_driver("placement", "least-loaded", LeastLoaded)
    assert host.available("placement") == ["alphabetical", "least-loaded"]
    driver = host.create_driver(
        "placement", "alphabetical", config_for(host), context(tmp_path, host)
    )
    assert isinstance(driver, Alphabetical)
    assert host.selected["placement"] == "alphabetical"
    assert host.drivers["placement"] is driver


def test_registered_driver_by_target_is_imported_only_when_selected(
    tmp_path: Path, site: Site
) -> None:
    name = site.module(
        unique("lazy_driver"),
        """
        import builtins
        builtins.LAZY_IMPORTED = True
        from caxton.placement.strategies import LeastLoaded as Strategy
    """,
    )
    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("placement", "lazy", f"{name}:Strategy")
    assert name not in sys.modules
    assert host.driver_class("placement", "lazy") is LeastLoaded
    assert name in sys.modules


def test_missing_driver_lists_installed_ones_and_the_package_to_install() -> None:
    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("transport", "memory", "caxton.placement.strategies:LeastLoaded")
    host.register_driver("transport", "tcp", "caxton.placement.strategies:LeastLoaded")
    with pytest.raises(DriverNotFound) as info:
        host.driver_class("transport", "quic")
    assert str(info.value) == (
        "transport driver 'quic' is not installed (installed transport drivers: memory, tcp); "
        "install it with: pip install caxton-transport-quic"
    )


def missing_first_party_driver() -> tuple[str, str, str] | None:
    """A (kind, name, distribution) of the first-party plugins that is not installed."""
    for (kind, name), dist in sorted(KNOWN_DISTRIBUTIONS.items()):
        try:
            distribution(dist)
        except PackageNotFoundError:
            return kind, name, dist
    return None


def test_missing_first_party_driver_with_real_entry_points() -> None:
    host = PluginHost(env={})
    missing = missing_first_party_driver()
    kind, name = (missing[0], missing[1]) if missing else ("transport", "carrier-pigeon")
    with pytest.raises(DriverNotFound) as info:
        host.driver_class(kind, name)
    listed = ", ".join(host.available(kind)) or "none"
    assert f"(installed {kind} drivers: {listed})" in str(info.value)
    hint = (
        f"install it with: pip install {missing[2]}"
        if missing
        else f"a plugin must publish it in the entry-point group 'caxton.{kind}'"
    )
    assert str(info.value).endswith(hint)


def test_missing_third_party_driver_says_where_drivers_come_from() -> None:
    host = PluginHost(env={})
    with pytest.raises(DriverNotFound) as info:
        host.driver_class("placement", "zone-awre")
    message = str(info.value)
    assert "placement driver 'zone-awre' is not installed (installed placement drivers: " in message
    assert "least-loaded, local, " in message
    assert message.endswith("a plugin must publish it in the entry-point group 'caxton.placement'")


def test_core_defaults_are_entry_points_of_caxton_core() -> None:
    rows = {(r.kind, r.name): r for r in PluginHost(env={}).describe()}
    for kind, name in [
        ("placement", "least-loaded"),
        ("placement", "round-robin"),
        ("placement", "local"),
        ("partition_policy", "quorum"),
        ("sandbox", "wasmtime"),
    ]:
        assert rows[(kind, name)].distribution == "caxton-core"
        assert rows[(kind, name)].version
        assert rows[(kind, name)].broken is None, rows[(kind, name)].broken
    assert PluginHost(env={}).driver_class("placement", "round-robin") is RoundRobin


def test_third_party_driver_found_selected_and_called_through_its_entry_point(
    tmp_path: Path, site: Site
) -> None:
    module = unique("caxton_lone")
    site.distribution(
        "caxton-lone-policy",
        "1.4.0",
        {"caxton.partition_policy": {"lone": f"{module}:LonePolicy"}},
        {
            module: """
            from caxton.drivers import PartitionDecision, PartitionMode, PartitionPolicy

            class LonePolicy(PartitionPolicy):
                calls = 0

                def decide(self, view):
                    LonePolicy.calls += 1
                    return PartitionDecision(PartitionMode.LOCAL_ONLY, "alone by design")
        """
        },
    )
    host, config = build_host_and_config(plugin_options=["partition_policy=lone"], env={})
    assert config["plugins"]["partition_policy"] == "lone"
    policy = host.create_driver("partition_policy", "lone", config, context(tmp_path, host))
    view = ClusterView("node-1", ("node-1",), ("node-1",))
    assert policy.decide(view).mode is PartitionMode.LOCAL_ONLY
    assert type(policy).calls == 1
    row = next(r for r in host.describe() if r.name == "lone")
    assert (row.kind, row.distribution, row.version, row.selected) == (
        "partition_policy",
        "caxton-lone-policy",
        "1.4.0",
        True,
    )


def test_driver_that_fails_to_import_is_named_with_distribution_and_version(site: Site) -> None:
    module = unique("caxton_bad_transport")
    site.distribution(
        "caxton-transport-bad",
        "0.3.1",
        {"caxton.transport": {"bad": f"{module}:Bad"}},
        {module: "raise ImportError('needs libfoo')\n"},
    )
    host = PluginHost(env={})
    with pytest.raises(PluginError) as info:
        host.driver_class("transport", "bad")
    assert str(info.value) == (
        "transport driver 'bad' (caxton-transport-bad 0.3.1) failed to load: "
        "ImportError: needs libfoo"
    )
    row = next(r for r in host.describe() if r.name == "bad")
    assert row.broken == str(info.value)


def test_driver_of_the_wrong_interface() -> None:
    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("transport", "confused", LeastLoaded)
    with pytest.raises(
        PluginError,
        match=r"transport driver 'confused' .* does not implement "
        r"caxton.drivers.transport.Transport",
    ):
        host.driver_class("transport", "confused")


def test_driver_that_fails_to_start(tmp_path: Path) -> None:
    class Fragile(PlacementStrategy):
        def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
            raise OSError("no such device")

        def rank(self, request: PlacementRequest, candidates: Any) -> list[NodeLoad]:
            return []

    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("placement", "fragile", Fragile)
    with pytest.raises(PluginError) as info:
        host.create_driver("placement", "fragile", config_for(host), context(tmp_path, host))
    assert str(info.value) == "placement driver 'fragile' failed to start: OSError: no such device"


def test_driver_config_section_is_validated_and_passed(tmp_path: Path) -> None:
    class Weighted(PlacementStrategy):
        config_section = ConfigSection(
            "placement.weighted", (Field("cpu_weight", "float", 1.0, minimum=0),), owner="weighted"
        )

        def rank(self, request: PlacementRequest, candidates: Any) -> list[NodeLoad]:
            return list(candidates)

    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("placement", "weighted", Weighted)
    good = tmp_path / "good.toml"
    good.write_text('[placement.weighted]\ncpu_weight = "2.5"\n')
    config = load_config(good, env={}, plugin_section_names=host.plugin_section_names())
    driver = host.create_driver("placement", "weighted", config, context(tmp_path, host))
    assert driver.config == {"cpu_weight": 2.5}
    factory = NodeFactory(tmp_path / "nodes")
    factory.register_driver("placement", "weighted", Weighted)
    node = factory.build(config={"placement.weighted.cpu_weight": 4})
    driver = node.host.create_driver("placement", "weighted", node.config, node.context)
    assert driver.config == {"cpu_weight": 4.0}
    bad = tmp_path / "bad.toml"
    bad.write_text("[placement.weighted]\ncpu_wieght = 2\n")
    config = load_config(bad, env={}, plugin_section_names=host.plugin_section_names())
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'placement.weighted.cpu_wieght' "
        r"\(did you mean 'placement.weighted.cpu_weight'\?\)",
    ):
        host.create_driver("placement", "weighted", config, context(tmp_path, host))


def test_drivers_that_implement_hooks_are_registered(tmp_path: Path) -> None:
    class Watching(PlacementStrategy):
        seen: list[str] = []

        def rank(self, request: PlacementRequest, candidates: Any) -> list[NodeLoad]:
            return list(candidates)

        @hookimpl
        def caxton_placement_filter(self, request: PlacementRequest, candidates: Any) -> list[str]:
            self.seen.append(request.agent_name)
            return ["node-9"]

    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("placement", "watching", Watching)
    driver = host.create_driver("placement", "watching", config_for(host), context(tmp_path, host))
    assert host.pm.get_plugin("placement:watching") is driver
    result = host.hook.caxton_placement_filter(
        request=PlacementRequest("a1"), candidates=[NodeLoad("node-9")]
    )
    assert result == [["node-9"]]
    assert Watching.seen == ["a1"]
    row = next(r for r in host.describe() if r.name == "watching")
    assert row.hooks == ["caxton_placement_filter"]


def test_driver_with_a_misspelt_hook_fails_when_created(tmp_path: Path) -> None:
    class Sloppy(PlacementStrategy):
        def rank(self, request: PlacementRequest, candidates: Any) -> list[NodeLoad]:
            return list(candidates)

        @hookimpl
        def caxton_placement_filtr(self, request: Any, candidates: Any) -> None:
            return None

    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("placement", "sloppy", Sloppy)
    with pytest.raises(PluginError, match=r"did you mean caxton_placement_filter\?"):
        host.create_driver("placement", "sloppy", config_for(host), context(tmp_path, host))


def test_auth_chain_in_configured_order(tmp_path: Path) -> None:
    from caxton.drivers import AuthDriver, Credentials, Identity

    class First(AuthDriver):
        async def authenticate(self, credentials: Credentials) -> Identity | None:
            return None

    class Second(First):
        pass

    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("auth", "first", First)
    host.register_driver("auth", "second", Second)
    chain = host.create_chain(
        "auth", ["second", "first"], config_for(host), context(tmp_path, host)
    )
    assert [type(d) for d in chain] == [Second, First]
    assert host.selected["auth"] == ["second", "first"]
    with pytest.raises(PluginError, match="placement is not a chain kind"):
        host.create_chain("placement", ["x"], config_for(host), context(tmp_path, host))


def test_auth_chain_with_a_missing_driver_names_the_package(tmp_path: Path) -> None:
    host = PluginHost(use_entry_points=False, env={})
    host.register_driver("auth", "api-key", "caxton.placement.strategies:LeastLoaded")
    with pytest.raises(DriverNotFound) as info:
        host.create_chain("auth", ["jwt", "api-key"], config_for(host), context(tmp_path, host))
    assert str(info.value) == (
        "auth driver 'jwt' is not installed (installed auth drivers: api-key); "
        "install it with: pip install caxton-auth-jwt"
    )


def test_unknown_kind() -> None:
    with pytest.raises(PluginError, match=r"unknown plugin kind 'storage'"):
        PluginHost(env={}).available("storage")


def test_hosts_share_nothing(tmp_path: Path) -> None:
    one = PluginHost(use_entry_points=False, env={})
    two = PluginHost(use_entry_points=False, env={})
    one.register_driver("placement", "alphabetical", Alphabetical)
    assert two.available("placement") == []
    plugin = type("P", (), {"caxton_node_started": hookimpl(lambda self, node: None)})()
    one.register(plugin, name="p")
    assert not two.pm.has_plugin("p")
    assert one.pm is not two.pm


# -------------------------------------------------------------------------
# Hook plugins
# -------------------------------------------------------------------------

GOOD_HOOKS = """
    from caxton import hookimpl

    STARTED = []

    @hookimpl
    def caxton_node_started(node):
        STARTED.append(node.node_id)
"""


MISSPELT_HOOKS = """
    from caxton import hookimpl

    @hookimpl
    def caxton_node_startd(node):
        pass
"""

BROKEN_ON_IMPORT = "raise RuntimeError('boom')\n"


def hook_distribution(site: Site, dist: str, version: str, source: str) -> tuple[str, str]:
    """Install a hook plugin distribution; return (entry-point name, module)."""
    module = unique(dist.replace("-", "_"))
    ep_name = dist.removeprefix("caxton-")
    site.distribution(dist, version, {"caxton.hooks": {ep_name: module}}, {module: source})
    return ep_name, module


def test_installed_hook_plugin_is_registered_and_listed(site: Site) -> None:
    name, module = hook_distribution(site, "caxton-audit", "2.0.1", GOOD_HOOKS)
    host = PluginHost(env={})
    host.load_hook_plugins()
    assert host.pm.get_plugin(name) is sys.modules[module]
    row = next(r for r in host.describe() if r.name == name)
    assert (row.kind, row.distribution, row.version, row.hooks, row.selected) == (
        "hooks",
        "caxton-audit",
        "2.0.1",
        ["caxton_node_started"],
        True,
    )


def test_hook_plugin_that_raises_on_import_is_named_and_skipped(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    name, _ = hook_distribution(site, "caxton-flaky", "1.2.3", BROKEN_ON_IMPORT)
    host = PluginHost(env={})
    with caplog.at_level(logging.WARNING, logger="caxton.plugins"):
        host.load_hook_plugins()
    assert host.broken[name] == ("'flaky' (caxton-flaky 1.2.3)", "RuntimeError: boom")
    assert caplog.messages == [
        "plugin 'flaky' (caxton-flaky 1.2.3) failed to load: RuntimeError: boom; "
        "continuing without it (use --plugin no:flaky to silence)"
    ]
    row = next(r for r in host.describe() if r.name == name)
    assert (row.distribution, row.version, row.broken, row.selected) == (
        "caxton-flaky",
        "1.2.3",
        "RuntimeError: boom",
        False,
    )


@pytest.mark.parametrize("how", ["argument", "environment", "config"])
def test_strict_mode_makes_a_broken_plugin_fatal(site: Site, tmp_path: Path, how: str) -> None:
    hook_distribution(site, "caxton-flaky", "1.2.3", BROKEN_ON_IMPORT)
    expected = (
        "plugin 'flaky' (caxton-flaky 1.2.3) failed to load: RuntimeError: boom (strict mode)"
    )
    path = tmp_path / "strict.toml"
    path.write_text("[plugins]\nstrict = true\n")
    load = {
        "argument": lambda: PluginHost(strict=True, env={}).load_hook_plugins(),
        "environment": lambda: PluginHost(env={"CAXTON_PLUGINS_STRICT": "1"}).load_hook_plugins(),
        "config": lambda: build_host_and_config(path, env={}),
    }[how]
    with pytest.raises(PluginError) as info:
        load()
    assert str(info.value) == expected


async def test_node_starts_despite_a_broken_hook_plugin(site: Site, tmp_path: Path) -> None:
    name, _ = hook_distribution(site, "caxton-flaky", "1.2.3", BROKEN_ON_IMPORT)
    factory = NodeFactory(tmp_path, use_entry_points=True)
    async with factory.node() as node:
        assert node.state == "running"
        assert name in node.host.broken


def test_misspelt_hookimpl_in_an_installed_plugin_fails_at_startup(site: Site) -> None:
    name, _ = hook_distribution(site, "caxton-typo", "0.1.0", MISSPELT_HOOKS)
    with pytest.raises(PluginError) as info:
        PluginHost(env={}).load_hook_plugins()
    assert str(info.value) == (
        f"plugin '{name}' implements unknown hook 'caxton_node_startd' "
        "(did you mean caxton_node_started?)"
    )


def test_misspelt_hookimpl_without_the_prefix(tmp_path: Path) -> None:
    plugin = type("P", (), {"caxon_node_started": hookimpl(lambda self, node: None)})()
    factory = NodeFactory(tmp_path)
    with pytest.raises(
        PluginError,
        match=r"unknown hook 'caxon_node_started' "
        r"\(did you mean caxton_node_started\?\)",
    ):
        factory.build(plugins=[plugin])


def test_optional_hookimpls_are_not_misspellings(tmp_path: Path) -> None:
    plugin = type("P", (), {"caxton_future_hook": hookimpl(optionalhook=True)(lambda self: None)})()
    NodeFactory(tmp_path).build(plugins=[plugin])  # does not raise


def test_hookimpl_with_a_wrong_argument_fails(tmp_path: Path) -> None:
    plugin = type("P", (), {"caxton_node_started": hookimpl(lambda self, nod: None)})()
    with pytest.raises(PluginError) as info:
        NodeFactory(tmp_path).build(plugins=[plugin])
    assert str(info.value).endswith(
        "implements caxton_node_started with argument(s) {'nod'} that the hookspec does "
        "not have (it offers: node)"
    )


def test_installed_plugin_with_a_wrong_argument_fails_at_startup(site: Site) -> None:
    name, _ = hook_distribution(
        site,
        "caxton-args",
        "0.1.0",
        """
        from caxton import hookimpl

        @hookimpl
        def caxton_member_joined(node, membr):
            pass
    """,
    )
    with pytest.raises(PluginError) as info:
        PluginHost(env={}).load_hook_plugins()
    assert str(info.value) == (
        f"plugin '{name}' implements caxton_member_joined with argument(s) {{'membr'}} "
        "that the hookspec does not have (it offers: node, member)"
    )


def test_plugin_option_blocks_a_hook_plugin(site: Site) -> None:
    name, _ = hook_distribution(site, "caxton-audit", "2.0.1", GOOD_HOOKS)
    host, _config = build_host_and_config(plugin_options=[f"no:{name}"], env={})
    assert not host.pm.has_plugin(name)
    assert host.pm.is_blocked(name)
    row = next(r for r in host.describe() if r.name == name)
    assert row.blocked


def test_environment_blocklist(site: Site) -> None:
    name, _ = hook_distribution(site, "caxton-audit", "2.0.1", GOOD_HOOKS)
    broken, _ = hook_distribution(site, "caxton-flaky", "1.0", BROKEN_ON_IMPORT)
    host = PluginHost(env={"CAXTON_DISABLED_PLUGINS": f"{name}, {broken}"})
    host.load_hook_plugins()
    assert not host.pm.has_plugin(name)
    assert host.broken == {}


def test_blocking_silences_a_misspelt_plugin(site: Site) -> None:
    name, _ = hook_distribution(site, "caxton-typo", "0.1.0", MISSPELT_HOOKS)
    host, _config = build_host_and_config(plugin_options=[f"no:{name}"], env={})
    assert not host.pm.has_plugin(name)


def test_config_blocklist_unregisters_an_installed_plugin(site: Site, tmp_path: Path) -> None:
    name, _ = hook_distribution(site, "caxton-audit", "2.0.1", GOOD_HOOKS)
    path = tmp_path / "c.toml"
    path.write_text(f'[plugins]\ndisabled = ["{name}"]\n')
    host, _config = build_host_and_config(path, env={})
    assert not host.pm.has_plugin(name)
    assert host.pm.is_blocked(name)


def test_blocked_driver_cannot_be_selected() -> None:
    host = PluginHost(env={"CAXTON_DISABLED_PLUGINS": "round-robin"})
    assert "round-robin" not in host.available("placement")
    with pytest.raises(DriverNotFound) as info:
        host.driver_class("placement", "round-robin")
    assert str(info.value) == (
        "placement driver 'round-robin' is blocked (--plugin no:round-robin or "
        "$CAXTON_DISABLED_PLUGINS)"
    )


def test_plugin_option_registers_an_uninstalled_module(site: Site) -> None:
    module = site.module(unique("devplugin") + ".hooks", GOOD_HOOKS)
    host, _config = build_host_and_config(plugin_options=[module], use_entry_points=False, env={})
    assert host.pm.get_plugin(module) is sys.modules[module]
    row = next(r for r in host.describe() if r.name == module)
    assert (row.kind, row.distribution, row.hooks) == ("hooks", None, ["caxton_node_started"])


def test_plugin_option_naming_no_module() -> None:
    with pytest.raises(PluginError) as info:
        build_host_and_config(plugin_options=["no_such_pkg.hooks"], env={})
    assert str(info.value) == (
        "--plugin no_such_pkg.hooks: no module named 'no_such_pkg.hooks' (is it on PYTHONPATH?)"
    )


def test_plugin_option_module_that_raises(site: Site) -> None:
    module = site.module(unique("devbroken"), "import does_not_exist_anywhere\n")
    host, _config = build_host_and_config(plugin_options=[module], env={}, use_entry_points=False)
    assert host.broken[module] == (
        f"module '{module}'",
        "ModuleNotFoundError: No module named 'does_not_exist_anywhere'",
    )
    with pytest.raises(PluginError, match=r"\(strict mode\)$"):
        build_host_and_config(
            plugin_options=[module], env={"CAXTON_PLUGINS_STRICT": "true"}, use_entry_points=False
        )


def test_config_modules_are_registered(site: Site, tmp_path: Path) -> None:
    module = site.module(unique("confplugin"), GOOD_HOOKS)
    path = tmp_path / "c.toml"
    path.write_text(f'[plugins]\nmodules = ["{module}"]\n')
    host, _config = build_host_and_config(path, env={}, use_entry_points=False)
    assert host.pm.has_plugin(module)


def test_plugin_declares_and_validates_its_config_section(site: Site, tmp_path: Path) -> None:
    module = site.module(
        unique("sectioned"),
        """
        from caxton import hookimpl
        from caxton.config import ConfigSection, Field

        @hookimpl
        def caxton_config_sections():
            return [ConfigSection("audit", (Field("sink", "str", "stderr"),
                                            Field("flush", "duration", "1s")), owner="audit")]
    """,
    )
    good = tmp_path / "good.yaml"
    good.write_text("audit:\n  flush: 250ms\n")
    _host, config = build_host_and_config(
        good, plugin_options=[module], env={}, use_entry_points=False
    )
    assert config["audit"] == {"sink": "stderr", "flush": 0.25}
    bad = tmp_path / "bad.yaml"
    bad.write_text("audit:\n  flush: never\n")
    with pytest.raises(Exception, match=r"bad.yaml: audit.flush: expected a duration"):
        build_host_and_config(bad, plugin_options=[module], env={}, use_entry_points=False)


def test_configure_hook_is_historic(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Late:
        @hookimpl
        def caxton_configure(self, config: Any) -> None:
            seen.append(config)

    host, config = build_host_and_config(env={}, use_entry_points=False)
    host.register(Late(), name="late")
    assert seen == [config]


def test_partition_decision_asks_plugins_first_then_the_policy(tmp_path: Path) -> None:
    from caxton.partition.quorum import QuorumPolicy

    class Custom:
        @hookimpl
        def caxton_partition_decision(self, node: Any, view: ClusterView) -> Any:
            if len(view.reachable_nodes) == 1:
                return PartitionDecision(PartitionMode.LOCAL_ONLY, "alone")
            return None

    host = PluginHost(use_entry_points=False, env={})
    node = type("N", (), {})()
    node.partition_policy = QuorumPolicy({}, context(tmp_path, host))  # type: ignore[attr-defined]
    host.register(Custom(), name="custom")
    with HookRecorder(host) as recorder:
        alone = host.hook.caxton_partition_decision(
            node=node, view=ClusterView("n1", ("n1", "n2", "n3"), ("n1",))
        )
        pair = host.hook.caxton_partition_decision(
            node=node, view=ClusterView("n1", ("n1", "n2", "n3"), ("n1", "n2"))
        )
    assert alone.mode is PartitionMode.LOCAL_ONLY
    assert pair.mode is PartitionMode.READ_WRITE  # the quorum policy answered
    assert [c.result for c in recorder.calls("caxton_partition_decision")] == [alone, pair]


def test_call_hook_names_the_plugin_that_raised() -> None:
    class Fine:
        @hookimpl
        def caxton_member_left(self, node: Any, member: Any) -> None:
            pass

    class Faulty:
        @hookimpl
        def caxton_member_left(self, node: Any, member: Any) -> None:
            raise KeyError("agents")

    class Refusing:
        @hookimpl
        def caxton_member_failed(self, node: Any, member: Any) -> None:
            raise ConfigError("refused on purpose")

    host = PluginHost(use_entry_points=False, env={})
    for plugin, name in ((Fine(), "fine"), (Faulty(), "faulty"), (Refusing(), "refusing")):
        host.register(plugin, name=name)
    with pytest.raises(PluginError) as info:
        host.call_hook("caxton_member_left", node=None, member=None)
    assert str(info.value) == "plugin 'faulty' failed in caxton_member_left: KeyError: 'agents'"
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(ConfigError, match="refused on purpose"):
        host.call_hook("caxton_member_failed", node=None, member=None)
    assert host.call_hook("caxton_member_joined", node=None, member=None) == []


def test_kinds_and_groups() -> None:
    assert {k: v.group for k, v in KINDS.items()} == {
        "sandbox": "caxton.sandbox",
        "transport": "caxton.transport",
        "membership": "caxton.membership",
        "placement": "caxton.placement",
        "partition_policy": "caxton.partition_policy",
        "auth": "caxton.auth",
    }
    assert [k for k, v in KINDS.items() if v.chain] == ["auth"]
    assert isinstance(PartitionPolicy, type)
