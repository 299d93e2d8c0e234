"""caxton.testing as plugin authors use it: recorder, node factory, fixtures, suites.

The conformance suites and the pytest fixtures are exercised the way a plugin's own
test run uses them: pytester writes a test module into a fresh directory and runs pytest
on it in a subprocess, where the fixtures come from the ``pytest11`` entry point.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from test_plugins import GOOD_HOOKS, Site, hook_distribution, unique
from test_plugins import site_fixture as site_fixture

import caxton.testing
from caxton import hookimpl
from caxton.errors import DriverNotFound
from caxton.plugins import PluginHost
from caxton.testing import HookRecorder, NodeFactory

pytest_plugins = ["pytester"]


# -------------------------------------------------------------------------
# HookRecorder
# -------------------------------------------------------------------------


class Scorer:
    @hookimpl
    def caxton_placement_score(self, request: Any, candidate: Any) -> float:
        return 2.0


class Exploding:
    @hookimpl
    def caxton_member_joined(self, node: Any, member: Any) -> None:
        raise ValueError("bad member")


def recorded_host() -> tuple[PluginHost, HookRecorder]:
    host = PluginHost(use_entry_points=False, env={})
    host.register(Scorer(), name="scorer")
    host.register(Exploding(), name="exploding")
    return host, HookRecorder(host)


def test_recorder_records_names_arguments_and_results() -> None:
    host, recorder = recorded_host()
    host.hook.caxton_placement_score(request="r1", candidate="c1")
    host.hook.caxton_placement_score(request="r2", candidate="c2")
    host.hook.caxton_member_left(node="n", member="m")
    assert recorder.names() == [
        "caxton_placement_score",
        "caxton_placement_score",
        "caxton_member_left",
    ]
    first, second = recorder.calls("caxton_placement_score")
    assert (first.request, first.candidate, first.result) == ("r1", "c1", [2.0])
    assert second.kwargs == {"request": "r2", "candidate": "c2"}
    assert recorder.getcall("caxton_member_left").member == "m"
    assert len(recorder.calls("caxton_member_left caxton_placement_score")) == 3
    assert len(recorder.calls(["caxton_member_left"])) == 1


def test_recorder_records_hook_calls_with_no_implementation() -> None:
    host, recorder = recorded_host()
    host.hook.caxton_node_stopped(node="n")
    assert recorder.getcall("caxton_node_stopped").result == []


def test_recorder_keeps_exceptions() -> None:
    host, recorder = recorded_host()
    with pytest.raises(ValueError, match="bad member"):
        host.hook.caxton_member_joined(node="n", member="m")
    call = recorder.getcall("caxton_member_joined")
    assert isinstance(call.exception, ValueError)
    with pytest.raises(ValueError, match="bad member"):
        _ = call.result


def test_recorder_records_nested_calls_in_order() -> None:
    host = PluginHost(use_entry_points=False, env={})

    class Chatty:
        @hookimpl
        def caxton_member_failed(self, node: Any, member: Any) -> str:
            host.hook.caxton_member_left(node=node, member=member)
            return "handled"

    host.register(Chatty(), name="chatty")
    recorder = HookRecorder(host)
    host.hook.caxton_member_failed(node="n", member="m")
    assert recorder.names() == ["caxton_member_failed", "caxton_member_left"]
    assert recorder.getcall("caxton_member_failed").result == ["handled"]
    assert recorder.getcall("caxton_member_left").result == []


def test_recorder_pairs_results_with_calls_across_threads() -> None:
    host = PluginHost(use_entry_points=False, env={})
    both_inside = threading.Barrier(2, timeout=30)

    class Echo:
        @hookimpl
        def caxton_placement_score(self, request: Any, candidate: Any) -> Any:
            both_inside.wait()  # both calls are running when either returns
            return request

    host.register(Echo(), name="echo")
    recorder = HookRecorder(host)
    threads = [
        threading.Thread(
            target=host.hook.caxton_placement_score, kwargs={"request": r, "candidate": None}
        )
        for r in ("r1", "r2")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted((c.request, c.result) for c in recorder.calls()) == [
        ("r1", ["r1"]),
        ("r2", ["r2"]),
    ]


def test_recorder_assertions_explain_themselves() -> None:
    host, recorder = recorded_host()
    host.hook.caxton_placement_score(request="r1", candidate="c1")
    assert len(recorder.assert_called("caxton_placement_score", request="r1")) == 1
    recorder.assert_called("caxton_placement_score", times=1)
    recorder.assert_not_called("caxton_node_started")
    with pytest.raises(AssertionError, match=r"caxton_placement_score\(request='r9'\) was not"):
        recorder.assert_called("caxton_placement_score", request="r9")
    with pytest.raises(AssertionError, match=r"was called 1 times, expected 2"):
        recorder.assert_called("caxton_placement_score", times=2)
    with pytest.raises(AssertionError, match=r"was called 1 times"):
        recorder.assert_not_called("caxton_placement_score")
    with pytest.raises(
        AssertionError,
        match=r"expected exactly one call of caxton_node_started, "
        r"got 0; recorded: caxton_placement_score",
    ):
        recorder.getcall("caxton_node_started")
    with pytest.raises(AttributeError, match="was not called with 'node'"):
        _ = recorder.getcall("caxton_placement_score").node


def test_recorder_pop_clear_and_finish() -> None:
    host, recorder = recorded_host()
    host.hook.caxton_member_left(node="n", member="m1")
    host.hook.caxton_member_left(node="n", member="m2")
    assert recorder.popcall("caxton_member_left").member == "m1"
    assert recorder.getcall("caxton_member_left").member == "m2"
    recorder.clear()
    assert recorder.calls() == []
    with pytest.raises(AssertionError, match="no call of caxton_member_left"):
        recorder.popcall("caxton_member_left")
    recorder.finish_recording()
    host.hook.caxton_member_left(node="n", member="m3")
    assert recorder.calls() == []


def test_recorder_as_context_manager_and_on_several_hosts() -> None:
    one = PluginHost(use_entry_points=False, env={})
    two = PluginHost(use_entry_points=False, env={})
    with HookRecorder(one) as recorder:
        recorder.attach(two.pm)
        one.hook.caxton_member_left(node="one", member="m")
        two.hook.caxton_member_left(node="two", member="m")
    one.hook.caxton_member_left(node="one", member="after")
    assert [c.node for c in recorder.calls()] == ["one", "two"]


# -------------------------------------------------------------------------
# NodeFactory
# -------------------------------------------------------------------------


def test_factory_skips_installed_plugins_unless_asked(site: Site, tmp_path: Path) -> None:
    name, module = hook_distribution(site, "caxton-audit", "2.0.1", GOOD_HOOKS)
    isolated = NodeFactory(tmp_path / "a").build()
    assert not isolated.host.pm.has_plugin(name)
    assert isolated.host.available("placement") == [
        "even-distribution",
        "least-loaded",
        "local",
        "round-robin",
    ]
    real = NodeFactory(tmp_path / "b", use_entry_points=True).build()
    assert real.host.pm.get_plugin(name) is sys.modules[module]


def test_factory_isolates_nodes_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAXTON_RUNTIME_MAX_AGENTS", "3")
    monkeypatch.setenv("CAXTON_DISABLED_PLUGINS", "least-loaded")
    node = NodeFactory(tmp_path).build()
    assert node.config["runtime"]["max_agents"] == 1000
    assert "least-loaded" in node.host.available("placement")
    chosen = NodeFactory(tmp_path, env={"CAXTON_RUNTIME_MAX_AGENTS": "3"}).build()
    assert chosen.config["runtime"]["max_agents"] == 3


def test_factory_config_layers(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path, config={"runtime.max_agents": 5, "runtime.restart_max": 1})
    node = factory.build("x", config={"runtime.max_agents": 7})
    assert node.node_id == "x"
    assert node.data_dir == tmp_path / "x"
    assert node.config["runtime"]["max_agents"] == 7
    assert node.config["runtime"]["restart_max"] == 1
    assert node.config["networking"]["bind_address"] == "127.0.0.1:0"
    assert node.config["coordination.cluster"]["bind_addr"] == "127.0.0.1:0"
    assert [n.node_id for n in (factory.build(), factory.build())] == ["node-1", "node-2"]
    assert len(factory.nodes) == 3


def test_factory_config_file_and_plugin_options(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("runtime:\n  agent_pool_size: 9\n")
    node = NodeFactory(tmp_path).build(config_path=path, plugin_options=["placement=local"])
    assert node.config["runtime"]["agent_pool_size"] == 9
    assert node.config["plugins"]["placement"] == "local"


def test_factory_registers_plugins_and_drivers_on_every_node(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path, core_drivers=False)
    factory.register(Scorer())
    factory.register_driver("placement", "ll", "caxton.placement.strategies:LeastLoaded")
    one, two = factory.build(), factory.build()
    for node in (one, two):
        assert node.hook.caxton_placement_score(request=None, candidate=None) == [2.0]
        assert node.host.available("placement") == ["ll"]
    with pytest.raises(DriverNotFound):
        one.host.driver_class("placement", "least-loaded")


async def test_factory_stop_all(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path)
    nodes = [factory.build(), factory.build()]
    for node in nodes:
        await node.start()
    await factory.stop_all()
    assert [n.state for n in nodes] == ["stopped", "stopped"]


# -------------------------------------------------------------------------
# The public module
# -------------------------------------------------------------------------


def test_lazy_exports() -> None:
    from caxton.testing.conformance import PlacementConformance
    from caxton.testing.sandbox import SandboxConformance

    assert caxton.testing.PlacementConformance is PlacementConformance
    assert caxton.testing.SandboxConformance is SandboxConformance
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = caxton.testing.Nope  # type: ignore[attr-defined]


def test_importing_caxton_testing_needs_no_pytest() -> None:
    code = "import sys, caxton.testing; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lazy_export_of_a_missing_module_is_an_attribute_error() -> None:
    name = unique("NotWrittenYet")
    with pytest.raises(AttributeError):
        getattr(caxton.testing, name)


# -------------------------------------------------------------------------
# Fixtures and suites as a plugin's own test run sees them
# -------------------------------------------------------------------------


def run_plugin_tests(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_plugin=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")


def test_fixtures_come_from_the_entry_point(pytester: pytest.Pytester) -> None:
    result = run_plugin_tests(
        pytester,
        """
        import asyncio

        def test_node(caxton_node_factory, caxton_hook_recorder):
            async def scenario():
                async with caxton_node_factory.node("plugin-test") as node:
                    return node
            node = asyncio.run(scenario())
            assert caxton_hook_recorder.getcall("caxton_node_started").node is node
            assert node.state == "stopped"
        """,
    )
    result.assert_outcomes(passed=1)


GOOD_AND_BAD_DRIVERS = """
    from caxton.drivers import (AuthDriver, Identity, PartitionDecision, PartitionMode,
                                PartitionPolicy, PlacementStrategy, Credentials)
    from caxton.errors import AuthError
    from caxton.testing import (AuthConformance, PartitionPolicyConformance,
                                PlacementConformance)

    class Fewest(PlacementStrategy):
        def rank(self, request, candidates):
            return sorted(candidates, key=lambda c: c.agents)

    class Inventive(PlacementStrategy):
        def rank(self, request, candidates):  # duplicates, and returns nothing for none
            return list(candidates) + list(candidates[:1])

    class Majority(PartitionPolicy):
        def decide(self, view):
            ok = len(view.reachable_nodes) * 2 > len(view.known_nodes)
            mode = PartitionMode.READ_WRITE if ok else PartitionMode.READ_ONLY
            return PartitionDecision(mode, "majority" if ok else "minority")

    class Paranoid(PartitionPolicy):
        def decide(self, view):
            return PartitionDecision(PartitionMode.READ_ONLY, "")

    class Token(AuthDriver):
        async def authenticate(self, credentials):
            token = credentials.headers.get("X-Token")
            if token is None:
                return None
            if token != "good":
                raise AuthError("bad token")
            return Identity("alice", frozenset({"admin"}), driver="token")

    class Lax(AuthDriver):
        async def authenticate(self, credentials):
            return Identity("anyone", frozenset())

    class TestFewest(PlacementConformance):
        driver_class = Fewest

    class TestInventive(PlacementConformance):
        driver_class = Inventive

    class TestMajority(PartitionPolicyConformance):
        driver_class = Majority

    class TestParanoid(PartitionPolicyConformance):
        driver_class = Paranoid

    class TokenCredentials:
        def valid_credentials(self):
            return Credentials(headers={"X-Token": "good"})

        def invalid_credentials(self):
            return Credentials(headers={"X-Token": "forged"})

    class TestToken(TokenCredentials, AuthConformance):
        driver_class = Token
        expected_identity = "alice"

    class TestLax(TokenCredentials, AuthConformance):
        driver_class = Lax
"""


def test_conformance_suites_pass_good_drivers_and_fail_bad_ones(
    pytester: pytest.Pytester,
) -> None:
    result = run_plugin_tests(pytester, GOOD_AND_BAD_DRIVERS)
    outcomes = result.parseoutcomes()
    failed = {
        line.split("::")[1] + "::" + line.split("::")[2].split(" ")[0]
        for line in result.outlines
        if line.startswith("FAILED ")
    }
    assert failed == {
        "TestInventive::test_ranks_only_given_candidates_once",
        "TestInventive::test_single_local_candidate_is_chosen",
        "TestParanoid::test_every_view_gets_a_decision",
        "TestParanoid::test_healthy_cluster_is_read_write",
        "TestLax::test_invalid_credentials_raise_auth_error",
        "TestLax::test_unrecognised_credentials_pass_on",
        "TestLax::test_no_credentials_pass_on",
    }, result.stdout.str()
    # Every good driver passes everything but the entry-point check, which needs a name.
    assert outcomes["skipped"] == 6
    assert outcomes["failed"] == 7


def test_conformance_checks_the_entry_point(pytester: pytest.Pytester) -> None:
    result = run_plugin_tests(
        pytester,
        """
        from caxton.placement.strategies import LeastLoaded, RoundRobin
        from caxton.testing import PlacementConformance

        class TestRight(PlacementConformance):
            driver_class = LeastLoaded
            entry_point_name = "least-loaded"

        class TestWrong(PlacementConformance):
            driver_class = RoundRobin
            entry_point_name = "least-loaded"

        class TestMissing(PlacementConformance):
            driver_class = RoundRobin
            entry_point_name = "no-such-strategy"
        """,
    )
    result.assert_outcomes(passed=3 * 10 - 2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*entry point 'least-loaded' (caxton.placement.strategies:LeastLoaded) is not "
            "caxton.placement.strategies.RoundRobin*",
            "*no entry point 'no-such-strategy' in group 'caxton.placement'*",
        ]
    )


def test_conformance_rejects_what_is_not_a_driver_of_the_kind(pytester: pytest.Pytester) -> None:
    result = run_plugin_tests(
        pytester,
        """
        from caxton.partition.quorum import QuorumPolicy
        from caxton.testing import PlacementConformance

        class TestConfused(PlacementConformance):
            driver_class = QuorumPolicy
        """,
    )
    result.stdout.fnmatch_lines(["*QuorumPolicy must subclass caxton.drivers.placement.*"])
    assert result.ret != 0
