"""Conformance suites for the placement, partition policy and auth driver kinds.

A plugin's own tests subclass the suite of its kind and name the class under test;
pytest then runs every contract check against it::

    from caxton.testing import PlacementConformance
    from my_plugin import ZoneAware

    class TestZoneAware(PlacementConformance):
        driver_class = ZoneAware
        entry_point_name = "zone-aware"

The suites are plain classes (their names do not start with ``Test``, so pytest does
not collect them on their own) and use no async test runner: coroutines run in a
fresh event loop, so they work whatever ``asyncio_mode`` the plugin's project uses.
The contracts are those of the abstract classes in :mod:`caxton.drivers`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from caxton.drivers import (
    AuthDriver,
    ClusterView,
    Credentials,
    Driver,
    DriverContext,
    Identity,
    NodeLoad,
    PartitionDecision,
    PartitionMode,
    PartitionPolicy,
    PlacementRequest,
    PlacementStrategy,
)
from caxton.errors import AuthError
from caxton.plugins import KINDS, PluginHost

__all__ = [
    "AuthConformance",
    "DriverConformance",
    "PartitionPolicyConformance",
    "PlacementConformance",
    "driver_config",
]

T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    """Run one coroutine to completion in a fresh event loop."""

    async def wrapper() -> T:
        return await awaitable

    return asyncio.run(wrapper())


def driver_config(cls: type[Driver], values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config a host would pass to ``cls``: its section's defaults, then ``values``,
    each converted and validated like a config file's (``"5s"`` becomes 5.0)."""
    section = cls.config_section
    if section is None:
        return dict(values or {})
    merged = {**section.defaults(), **(values or {})}
    out: dict[str, Any] = {}
    for key, value in merged.items():
        field = section.field(key)
        if field is None:
            raise AssertionError(f"{cls.__name__}: '{key}' is not a key of [{section.path}]")
        out[key] = field.convert(value)
    return out


class DriverConformance:
    """What every driver kind promises (:class:`caxton.drivers.Driver`).

    Subclasses of a kind's suite set :attr:`driver_class`; the rest is optional.
    """

    #: The abstract base class of the kind (set by each kind's suite).
    interface: ClassVar[type[Driver]] = Driver
    #: The driver class under test (set by the plugin's test class).
    driver_class: ClassVar[type[Driver]]
    #: Values for the driver's config section; the section's defaults fill the rest.
    driver_config: ClassVar[Mapping[str, Any]] = {}
    #: The entry-point name the driver is published under; checked when set.
    entry_point_name: ClassVar[str | None] = None
    #: The node id in the driver's :class:`DriverContext`.
    node_id: ClassVar[str] = "node-1"

    def make_context(self, data_dir: Path) -> DriverContext:
        """A context like a node's: its own plugin host (no installed plugins)."""
        host = PluginHost(use_entry_points=False, env={})
        return DriverContext(node_id=self.node_id, data_dir=data_dir, hook=host.hook)

    def make_driver(self, data_dir: Path) -> Driver:
        """Construct the driver under test as a node would. Override for special setup."""
        return self.driver_class(
            driver_config(self.driver_class, self.driver_config), self.make_context(data_dir)
        )

    @pytest.fixture
    def driver(self, tmp_path: Path) -> Driver:
        return self.make_driver(tmp_path)

    # -- checks -------------------------------------------------------------------

    def test_implements_the_interface(self) -> None:
        assert issubclass(self.driver_class, self.interface), (
            f"{self.driver_class.__name__} must subclass "
            f"{self.interface.__module__}.{self.interface.__name__}"
        )
        missing = sorted(getattr(self.driver_class, "__abstractmethods__", ()))
        assert not missing, f"{self.driver_class.__name__} leaves abstract: {', '.join(missing)}"

    def test_kind_matches_the_interface(self) -> None:
        assert self.driver_class.kind == self.interface.kind

    def test_config_section_defaults_are_valid(self) -> None:
        section = self.driver_class.config_section
        if section is None:
            return
        for field in section.fields:
            try:
                field.convert(field.default)
            except ValueError as exc:
                raise AssertionError(f"[{section.path}] {field.name}: default {exc}") from None

    def test_start_then_close_twice(self, driver: Driver) -> None:
        async def lifecycle() -> None:
            await driver.start()
            await driver.close()
            await driver.close()  # "Must be safe to call twice"

        run(lifecycle())

    def test_published_under_its_entry_point(self) -> None:
        if self.entry_point_name is None:
            pytest.skip("entry_point_name is not set on the test class")
        group = KINDS[self.interface.kind].group
        found = [ep for ep in entry_points(group=group) if ep.name == self.entry_point_name]
        assert found, f"no entry point '{self.entry_point_name}' in group '{group}'"
        assert len(found) == 1, f"several distributions publish '{self.entry_point_name}'"
        loaded = found[0].load()
        assert loaded is self.driver_class, (
            f"entry point '{self.entry_point_name}' ({found[0].value}) is not "
            f"{self.driver_class.__module__}.{self.driver_class.__qualname__}"
        )


# -------------------------------------------------------------------------
# Placement
# -------------------------------------------------------------------------


class PlacementConformance(DriverConformance):
    """The contract of :class:`caxton.drivers.PlacementStrategy`.

    ``rank(request, candidates)`` returns candidates best first: only given candidates,
    each at most once, never empty when the candidates are not, without changing the
    sequence it was given. :meth:`candidates` always includes this node.
    """

    interface: ClassVar[type[Driver]] = PlacementStrategy

    def candidates(self) -> list[NodeLoad]:
        """Several nodes with different loads, this node (``node_id``) among them."""
        return [
            NodeLoad("node-3", agents=40, cpu_percent=18.0, memory_bytes=2_300_000_000),
            NodeLoad(self.node_id, agents=42, cpu_percent=15.0, memory_bytes=2_100_000_000),
            NodeLoad(
                "node-2",
                agents=38,
                cpu_percent=12.0,
                memory_bytes=1_800_000_000,
                region="eu-west",
                zone="eu-west-1a",
                labels={"gpu": "true"},
            ),
        ]

    def request(self) -> PlacementRequest:
        return PlacementRequest(agent_name="conformance-agent")

    def _rank(self, driver: Driver, candidates: Sequence[NodeLoad]) -> list[NodeLoad]:
        assert isinstance(driver, PlacementStrategy)
        ranked = driver.rank(self.request(), candidates)
        assert isinstance(ranked, list), f"rank() returned {type(ranked).__name__}, not a list"
        return ranked

    def test_no_candidates_rank_empty(self, driver: Driver) -> None:
        assert self._rank(driver, []) == []

    def test_ranks_only_given_candidates_once(self, driver: Driver) -> None:
        candidates = self.candidates()
        ranked = self._rank(driver, candidates)
        ids = [c.node_id for c in ranked]
        assert len(ids) == len(set(ids)), f"a node ranked twice: {ids}"
        for load in ranked:
            assert load in candidates, f"rank() returned a node it was not given: {load}"

    def test_never_empty_when_given_candidates(self, driver: Driver) -> None:
        for _ in range(2 * len(self.candidates())):  # stateful strategies rotate
            assert self._rank(driver, self.candidates()), "rank() returned no node"

    def test_single_local_candidate_is_chosen(self, driver: Driver) -> None:
        only = [c for c in self.candidates() if c.node_id == self.node_id]
        assert [c.node_id for c in self._rank(driver, only)] == [self.node_id]

    def test_does_not_change_the_candidates(self, driver: Driver) -> None:
        candidates = self.candidates()
        before = copy.deepcopy(candidates)
        self._rank(driver, candidates)
        assert candidates == before


# -------------------------------------------------------------------------
# Partition policy
# -------------------------------------------------------------------------


class PartitionPolicyConformance(DriverConformance):
    """The contract of :class:`caxton.drivers.PartitionPolicy`.

    ``decide(view)`` answers every view with a :class:`PartitionDecision` (a
    :class:`PartitionMode`, a non-empty reason, a bool ``queue_writes``), the same
    decision for the same view, and leaves a cluster whose every member is reachable
    read-write.
    """

    interface: ClassVar[type[Driver]] = PartitionPolicy

    def views(self) -> list[ClusterView]:
        """Healthy, split and degenerate views of a cluster seen from ``node_id``."""
        me = self.node_id
        three = (me, "node-2", "node-3")
        five = (me, "node-2", "node-3", "node-4", "node-5")
        return [
            ClusterView(me, known_nodes=(me,), reachable_nodes=(me,)),
            ClusterView(me, known_nodes=three, reachable_nodes=three),
            ClusterView(me, known_nodes=three, reachable_nodes=(me, "node-2")),
            ClusterView(me, known_nodes=three, reachable_nodes=(me,)),
            ClusterView(me, known_nodes=five, reachable_nodes=(me, "node-2")),
            ClusterView(me, known_nodes=five, reachable_nodes=(me, "node-2"), quorum_size=2),
            ClusterView(me, known_nodes=(), reachable_nodes=(me,)),
        ]

    def healthy_views(self) -> list[ClusterView]:
        return [
            v
            for v in self.views()
            if v.known_nodes and set(v.known_nodes) <= set(v.reachable_nodes)
        ]

    def _decide(self, driver: Driver, view: ClusterView) -> PartitionDecision:
        assert isinstance(driver, PartitionPolicy)
        return driver.decide(view)

    def test_every_view_gets_a_decision(self, driver: Driver) -> None:
        for view in self.views():
            decision = self._decide(driver, view)
            assert isinstance(decision, PartitionDecision), f"{view}: got {decision!r}"
            assert isinstance(decision.mode, PartitionMode), f"{view}: mode {decision.mode!r}"
            assert isinstance(decision.reason, str)
            assert decision.reason.strip(), f"{view}: a decision must say why"
            assert isinstance(decision.queue_writes, bool)

    def test_same_view_same_decision(self, driver: Driver) -> None:
        for view in self.views():
            assert self._decide(driver, view) == self._decide(driver, view)

    def test_healthy_cluster_is_read_write(self, driver: Driver) -> None:
        for view in self.healthy_views():
            decision = self._decide(driver, view)
            assert decision.mode is PartitionMode.READ_WRITE, f"{view}: {decision}"


# -------------------------------------------------------------------------
# Auth
# -------------------------------------------------------------------------


class AuthConformance(DriverConformance):
    """The contract of :class:`caxton.drivers.AuthDriver`.

    ``authenticate`` returns an :class:`Identity` for valid credentials, ``None`` for
    credentials it does not recognise (so the next driver of the chain is asked), and
    raises :class:`caxton.errors.AuthError` for credentials of its kind that are invalid.

    Subclasses provide :meth:`valid_credentials` and :meth:`invalid_credentials`.
    """

    interface: ClassVar[type[Driver]] = AuthDriver
    #: The identity name the valid credentials belong to; checked when set.
    expected_identity: ClassVar[str | None] = None

    def valid_credentials(self) -> Credentials:
        raise NotImplementedError(f"{type(self).__name__} must define valid_credentials()")

    def invalid_credentials(self) -> Credentials:
        """Credentials of this driver's kind that must be refused."""
        raise NotImplementedError(f"{type(self).__name__} must define invalid_credentials()")

    def unrecognised_credentials(self) -> Credentials:
        """Credentials of no kind this driver knows: it must pass them on."""
        return Credentials(headers={"X-Conformance-Unrelated": "1"}, method="GET", path="/")

    def _authenticate(self, driver: Driver, credentials: Credentials) -> Identity | None:
        assert isinstance(driver, AuthDriver)

        async def call() -> Identity | None:
            await driver.start()
            try:
                return await driver.authenticate(credentials)
            finally:
                await driver.close()

        return run(call())

    def test_valid_credentials_give_an_identity(self, driver: Driver) -> None:
        identity = self._authenticate(driver, self.valid_credentials())
        assert isinstance(identity, Identity), f"got {identity!r}"
        assert isinstance(identity.name, str)
        assert identity.name, "an identity needs a name"
        assert isinstance(identity.roles, frozenset)
        assert all(isinstance(role, str) for role in identity.roles)
        if self.expected_identity is not None:
            assert identity.name == self.expected_identity

    def test_invalid_credentials_raise_auth_error(self, driver: Driver) -> None:
        with pytest.raises(AuthError):
            self._authenticate(driver, self.invalid_credentials())

    def test_unrecognised_credentials_pass_on(self, driver: Driver) -> None:
        assert self._authenticate(driver, self.unrecognised_credentials()) is None

    def test_no_credentials_pass_on(self, driver: Driver) -> None:
        assert self._authenticate(driver, Credentials(headers={})) is None
