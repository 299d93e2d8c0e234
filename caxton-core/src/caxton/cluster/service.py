"""The cluster service of one node: transport, membership, agent registry and routing.

:class:`Cluster` is created by the node when it clusters (``--bootstrap``, ``--join``,
``coordination.cluster_enabled``). It

- listens on ``coordination.cluster.bind_addr`` and dispatches what arrives: datagrams
  and ``GOSSIP`` frames to the membership driver, ``MESSAGE`` frames to
  :class:`~caxton.cluster.forwarding.Forwarding` (which also sends them),
  ``CONTROL`` frames to itself (:mod:`caxton.cluster.wire`);
- keeps the :class:`~caxton.cluster.registry.AgentRegistry`: this node's agents come
  from the agent hooks; every change is pushed to the live members at once, and the
  registry version rides in this node's membership metadata (``reg``), so a member that
  missed a push sees a newer version and pulls the changes;
- is the router's resolver: a name not registered here resolves to a
  :class:`PeerRoute` through the registry, the reply routes learned from inbound
  messages (external clients waiting on another node), and finally by asking the live
  members; ``None`` (``Agent not found``) only after that;
- records membership, registry and partition-mode events for ``caxton cluster watch``.

See docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from caxton import hookimpl
from caxton.cluster import agent_ops, wire
from caxton.cluster.agent_ops import OPS as AGENT_OPS
from caxton.cluster.auth import (
    compare,
    describe_refusal,
    problems_of,
    recent_refusals,
    security_summary,
)
from caxton.cluster.discovery import DnsSeeds, rejoin_until_joined
from caxton.cluster.events import ClusterEvent, EventLog
from caxton.cluster.failover import OPS as FAILOVER_OPS
from caxton.cluster.failover import Failover
from caxton.cluster.forwarding import Forwarding, PeerRoute
from caxton.cluster.lease import OPS as LEASE_OPS
from caxton.cluster.lease import LeaseKeeper
from caxton.cluster.moves import OPS as MOVE_OPS
from caxton.cluster.moves import DrainReport, Moves
from caxton.cluster.names import OPS as NAME_OPS
from caxton.cluster.names import NameClaims
from caxton.cluster.operations import OPS as OPERATION_OPS
from caxton.cluster.operations import ClusterOperations
from caxton.cluster.partition import PartitionGuard, QueuedRoute, consistency_digest
from caxton.cluster.rebalance import AutoRebalance
from caxton.cluster.registry import AgentEntry, AgentRegistry, Delta
from caxton.cluster.versions import WireAdmission, wire_range
from caxton.drivers.membership import Member, MemberStatus
from caxton.drivers.partition import ClusterView, PartitionDecision, PartitionMode
from caxton.drivers.transport import Address, Frame, FrameKind
from caxton.errors import (
    CaxtonError,
    Conflict,
    IncompatibleCluster,
    NotFound,
    PluginError,
    TransportError,
    ValidationError,
)
from caxton.membership.core import EventKind, MemberEvent
from caxton.samples import Samples
from caxton.units import format_address, parse_address

if TYPE_CHECKING:
    from caxton.agents import Agent
    from caxton.api.resources import CpuSampler
    from caxton.node import Node

__all__ = ["Cluster", "ClusterEvent", "PeerRoute"]

log = logging.getLogger("caxton.cluster")

#: Seconds to wait for a registry pull, a "where" answer or a control request.
CONTROL_TIMEOUT = 2.0
#: Reply routes remembered (names of senders on other nodes, e.g. waiting clients).
REPLY_ROUTES = 100_000
#: Routes cached (agents and reply routes); the oldest is dropped beyond.
ROUTE_CACHE = 100_000
#: Seconds an unsuccessful lookup is trusted while the registry did not change.
MISS_TTL = 1.0
#: Seconds between refreshes of the load figures in this node's metadata.
LOAD_INTERVAL = 5.0
#: Seconds between two metadata updates (each is news gossiped to every member).
META_DEBOUNCE = 0.05
#: Seconds a graceful leave waits for its announcement to spread.
LEAVE_TIMEOUT = 2.0

#: What the cluster layer uses of a membership driver beyond caxton.drivers.Membership.
MEMBERSHIP_NEEDS = ("subscribe", "member", "cluster_view", "ping", "remove")

_REACHABLE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)
_GONE = (EventKind.FAILED, EventKind.LEFT, EventKind.REMOVED)


def agent_capabilities(agent: Agent) -> list[str]:
    """The grants an agent holds, as short names (``wasi``, ``stdio``, ``fs``, ``env``)."""
    caps = agent.capabilities
    names = []
    if caps.enabled:
        names.append("wasi")
    if caps.stdio:
        names.append("stdio")
    if caps.preopen_dirs:
        names.append("fs")
    if caps.env:
        names.append("env")
    return names


class Cluster:
    """See the module docstring. Built by :class:`caxton.node.Node`; one per node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.node_id = node.node_id
        self.registry = AgentRegistry(node.node_id)
        self.events = EventLog()
        self.counts: dict[str, int] = dict.fromkeys(
            ("forwarded", "received", "undeliverable", "refused", "pushes", "pulls", "lookups"), 0
        )
        self._routes: dict[str, PeerRoute] = {}
        self._reply_routes: OrderedDict[str, str] = OrderedDict()
        self._misses: dict[str, tuple[int, float]] = {}
        self._generation = 0  # bumped by every registry or membership change
        self._resolving: dict[str, asyncio.Future[PeerRoute | None]] = {}
        self._pulling: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pushed = 0
        self._publish_handle: asyncio.Handle | None = None
        self._meta_handle: asyncio.TimerHandle | None = None
        self._load: dict[str, Any] = {}
        self._cpu: CpuSampler | None = None
        self._stopper: asyncio.Task[None] | None = None
        self._mode: PartitionMode | None = None
        #: Loop time until which the last mode decision stands (the lease's expiry).
        self._decided_until = -math.inf
        self._deciding = False
        #: The quorum lease: who answered lately decides the mode (caxton.cluster.lease).
        self.lease = LeaseKeeper(self)
        self.partition = PartitionGuard(self)
        self._unsubscribe: Callable[[], None] | None = None
        self._plugin_name = f"caxton.cluster.{self.node_id}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = False
        self.leaving = False
        #: Monotonic time until which a whole-cluster stop holds (caxton.cluster.shutdown).
        self.stopping_until: float | None = None
        #: MESSAGE frames out and in (caxton.cluster.forwarding).
        self.forwarding = Forwarding(self)
        #: Replicas of this node's agents and failover (caxton.cluster.failover).
        self.failover = Failover(self)
        #: Live moves of agents and draining (caxton.cluster.moves).
        self.moves = Moves(self)
        #: What the last drain (leave, stop) did: agents moved, agents left behind.
        self.drain_report: DrainReport | None = None
        #: coordination.cluster.rebalance = "on-join" (caxton.cluster.rebalance).
        self.rebalance = AutoRebalance(self)
        #: Seconds from a member's metadata update (its wall clock, ``at``) to this node
        #: hearing of it by gossip: the gossip convergence time, within clock drift.
        self.convergence = Samples(pending=256, window=256)
        #: Cluster-wide operator procedures: snapshots, emergencies (cluster.operations).
        self.operations = ClusterOperations(self)
        #: One agent per name: the name claims of new agents (caxton.cluster.names).
        self.names = NameClaims(self)
        #: The wire protocol versions this node speaks; members whose range does not
        #: overlap are kept out of the view (caxton.cluster.versions).
        self.admission = WireAdmission(
            self.node_id, (wire.OLDEST_VERSION, wire.MESSAGE_VERSION), self._refused
        )

    @property
    def stopping_all(self) -> bool:
        """The whole cluster is stopping (``caxton cluster stop --all``): a member that
        goes away is not failed over, and this node does not drain its agents onto
        others when it stops (they come back here on restart)."""
        until = self.stopping_until
        return until is not None and time.monotonic() < until

    # -- services -----------------------------------------------------------------

    @property
    def transport(self) -> Any:
        return self.node.transport

    @property
    def membership(self) -> Any:
        return self.node.membership

    @property
    def router(self) -> Any:
        return self.node.router

    # -- lifecycle ------------------------------------------------------------------

    async def listen(self) -> Address:
        """Start the transport listening on ``coordination.cluster.bind_addr``."""
        self._loop = asyncio.get_running_loop()
        bind = str(self.node.config["coordination.cluster"]["bind_addr"])
        try:
            address = parse_address(bind)
        except ValueError as exc:
            raise ValidationError(f"coordination.cluster.bind_addr: {exc}") from None
        try:
            bound: Address = await self.transport.listen(address, self._on_frame, self._on_datagram)
        except OSError as exc:
            raise CaxtonError(
                f"cannot listen for cluster traffic on {bind}: {exc.strerror or exc} "
                f"(coordination.cluster.bind_addr, --bind-addr; is another node using it?)"
            ) from None
        return bound

    async def start(self) -> None:
        """Announce local agents, become the router's resolver, join the seeds."""
        node = self.node
        self._loop = asyncio.get_running_loop()
        self._started_at = time.time()
        missing = [m for m in MEMBERSHIP_NEEDS if not callable(getattr(self.membership, m, None))]
        if missing:
            raise PluginError(
                f"the {node.host.selected.get('membership')} membership driver lacks "
                f"{', '.join(missing)}, which the cluster layer needs; use membership = "
                f'"swim" (or a driver built on caxton.membership.driver.CoreDriver)'
            )
        await self.partition.start()
        if node.agents is not None:
            for agent in node.agents.list():
                self._announce(agent)
        node.host.register(self, name=self._plugin_name)
        if node.agents is not None:
            node.agents.write_guard = self.partition.check_write
        await self.failover.start()
        self.router.resolver = self.resolve
        # at-least-once messages replayed at start that were on their way elsewhere
        forwarded = self.router.forward_parked()
        if forwarded:
            log.info("node %s: forwarding %d replayed messages", self.node_id, forwarded)
        self._unsubscribe = self.membership.subscribe(self._on_member_event)
        set_admission = getattr(self.membership, "set_admission", None)
        if set_admission is not None:
            set_admission(self.admission)
        self._refresh_load()
        self._update_meta()
        self._spawn(self._load_loop())
        self.started = True
        self.lease.start()
        seeds = list(node.join_addresses)
        discovered = self._dns_seeds()
        if discovered is not None:
            seeds += [seed for seed in await discovered.resolve() if seed not in seeds]
            self._spawn(
                rejoin_until_joined(
                    discovered,
                    self.membership.join,
                    lambda: bool(self._peers()),
                    node.config["coordination.cluster"]["dns_interval"],
                    known=set(seeds),
                )
            )
        if seeds and not node.bootstrap:
            self.lease.joining = tuple(seeds)  # read-only until it knows a member
            answered = await self.membership.join(seeds)
            if answered:
                log.info(
                    "node %s joined the cluster through %d of %d seeds",
                    self.node_id,
                    answered,
                    len(seeds),
                )
            else:
                refusals = recent_refusals(node.transport, since=self._started_at)
                log.warning(
                    "node %s: no seed answered (%s)%s; retrying in the background",
                    self.node_id,
                    ", ".join(seeds),
                    "".join(f"; {describe_refusal(r)}" for r in refusals),
                )
        expected = (
            self.membership.settings.bootstrap_expect if hasattr(self.membership, "settings") else 0
        )
        if expected > 1:
            await self.membership.wait_for_members(expected, timeout=60.0)
        if self.admission.refused and not self._peers():
            # Every member it heard of speaks a wire protocol it cannot: refuse to join.
            raise IncompatibleCluster(next(iter(self.admission.refused.values())))
        for member in self._peers():
            self._check_version(member)
        await self.lease.renew_now()
        self._mode_changed()

    async def close(self) -> None:
        """Leave gracefully (announced), then stop routing through the cluster."""
        if not self.started:
            return
        self.started = False
        if not self.leaving:
            self.leaving = True
            drain = float(self.node.config["coordination.cluster"].get("drain_on_stop") or 0)
            agents = self.node.agents
            if drain > 0 and agents is not None and len(agents) and not self.stopping_all:
                # A stop (SIGTERM), not a crash: move the agents off first (not when the
                # whole cluster stops: they come back here, caxton.cluster.shutdown).
                with contextlib.suppress(Exception):
                    self.drain_report = await self.moves.drain(drain)
            with contextlib.suppress(Exception):
                await self.membership.leave(LEAVE_TIMEOUT)
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self.router is not None and self.router.resolver == self.resolve:
            self.router.resolver = None
        with contextlib.suppress(Exception):
            self.node.host.pm.unregister(name=self._plugin_name)
        self.failover.close()
        self.lease.close()
        agents = self.node.agents
        if agents is not None and agents.write_guard == self.partition.check_write:
            agents.write_guard = None
        for handle in (self._publish_handle, self._meta_handle):
            if handle is not None:
                handle.cancel()
        tasks = list(self._tasks) + list(self._pulling.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.events.close(f"node {self.node_id} stopped")

    async def leave(self, drain_timeout: float) -> int:
        """Move this node's agents to the others, drain queued messages (together up to
        ``drain_timeout``), then announce the leave.

        Returns how many messages were still queued; :attr:`drain_report` names the
        agents moved and those that could not move in time. The caller stops the node.
        """
        self.leaving = True
        remaining = 0
        loop = self._get_loop()
        deadline = loop.time() + drain_timeout
        if drain_timeout > 0 and self.node.agents is not None and len(self.node.agents):
            self.drain_report = await self.moves.drain(drain_timeout)
        left = deadline - loop.time()
        if self.router is not None and left > 0:
            remaining = int(await self.router.drain(left))
        self.events.record("left", f"Node {self.node_id} leaving the cluster", node_id=self.node_id)
        await self.membership.leave(LEAVE_TIMEOUT)
        return remaining

    # -- views ----------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """Every member with its status, address and gossiped load, by node id."""
        rows = []
        for member in sorted(self.membership.members(), key=lambda m: m.node_id):
            meta = dict(member.meta)
            rows.append(
                {
                    "node_id": member.node_id,
                    "status": member.status.value,
                    "address": format_address(member.address),
                    "incarnation": member.incarnation,
                    "agents": meta.get("agents"),
                    "cpu": meta.get("cpu"),
                    "memory": meta.get("memory"),
                    "version": meta.get("version"),
                    "wire": list(wire_range(meta)),
                    "region": meta.get("region"),
                    "zone": meta.get("zone"),
                    "labels": meta.get("labels") or {},
                    "api": meta.get("api"),
                    "local": member.node_id == self.node_id,
                }
            )
        return rows

    def view(self) -> ClusterView:
        """What the partition decision sees: the known members (not left; failed ones
        count) and, as reachable, those this node had a round trip with within
        ``partition.detection_timeout`` (the quorum lease's contacts), not the
        membership's opinion of who is alive: see :mod:`caxton.cluster.lease`."""
        known = self.lease.known()
        return ClusterView(self.node_id, known, self.lease.contacts(), self.lease.quorum_size)

    def decision(self) -> PartitionDecision | None:
        """This node's partition mode: plugins first, then the policy driver."""
        decision: PartitionDecision | None = self.node.hook.caxton_partition_decision(
            node=self.node, view=self.view()
        )
        return decision

    def status(self) -> dict[str, Any]:
        view = self.view()
        decision = self.decision()
        mode = decision.mode if decision is not None else PartitionMode.READ_WRITE
        healthy = mode is PartitionMode.READ_WRITE
        by_status: dict[str, int] = {}
        for member in self.membership.members():
            by_status[member.status.value] = by_status.get(member.status.value, 0) + 1
        return {
            "node_id": self.node_id,
            "status": "HEALTHY" if healthy else "DEGRADED",
            "partition": "majority" if healthy else "minority",
            "mode": mode.value,
            "reason": decision.reason if decision is not None else "no partition policy",
            "queue_writes": decision.queue_writes if decision is not None else False,
            "nodes_reachable": len(view.reachable_nodes),
            "nodes_known": len(view.known_nodes),
            "members": by_status,
            "agents_total": self.registry.count(),
            "registry_version": list(self.registry.version),
            "transport": self.node.host.selected.get("transport"),
            "membership": self.node.host.selected.get("membership"),
            "address": format_address(self.node.cluster_address)
            if self.node.cluster_address
            else None,
            "counts": dict(self.counts),
            "gossip": self._gossip_stats(),
            **self.partition.status(),
            "lease": self.lease.status(),
            "pending_failovers": self.failover.pending(),
        }

    def _gossip_stats(self) -> dict[str, Any]:
        stats = getattr(self.membership, "stats", None)
        if stats is None:
            return {}
        data: dict[str, Any] = stats()
        keys = ("bytes_sent", "bytes_received", "datagrams_sent", "syncs_sent",
                "probe_rtt_ms", "health_score", "send_errors")  # fmt: skip
        return {key: data[key] for key in keys if key in data}

    def agents(self) -> list[dict[str, Any]]:
        """Every agent of the cluster the registry knows, by node then name."""
        return [entry.to_dict() for entry in self.registry.entries()]

    def recent_events(self, limit: int = 100) -> list[ClusterEvent]:
        return self.events.recent(limit)

    def watch(self) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[ClusterEvent]]:
        """A queue that receives every event from now on (``async with``)."""
        return self.events.watch()

    # -- operations -------------------------------------------------------------------

    async def ping(self, node_id: str, timeout: float = 2.0) -> dict[str, Any]:
        """A SWIM probe and a transport round trip to ``node_id``, in milliseconds."""
        member = self._member(node_id)
        result: dict[str, Any] = {
            "node_id": node_id,
            "status": member.status.value,
            "address": format_address(member.address),
        }
        if node_id == self.node_id:
            return {**result, "gossip_rtt_ms": 0.0, "transport_rtt_ms": 0.0}
        try:
            result["gossip_rtt_ms"] = round(
                await self.membership.ping(node_id, timeout=timeout) * 1000, 3
            )
        except CaxtonError as exc:
            result["gossip_rtt_ms"] = None
            result["gossip_error"] = str(exc)
        start = time.perf_counter()
        try:
            await self._control(member.address, timeout, "ping")
            result["transport_rtt_ms"] = round((time.perf_counter() - start) * 1000, 3)
        except CaxtonError as exc:
            result["transport_rtt_ms"] = None
            result["transport_error"] = str(exc)
        result["reachable"] = (
            result["gossip_rtt_ms"] is not None or result["transport_rtt_ms"] is not None
        )
        return result

    def remove(self, node_id: str) -> Member:
        """Force a failed member out (every node records it as left)."""
        if node_id == self.node_id:
            raise Conflict(f"{node_id} is this node; a node leaves with `caxton cluster leave`")
        member: Member = self.membership.remove(node_id)
        self._forget_node(node_id, f"Node {node_id} removed by force", "removed")
        return member

    async def verify_auth(self) -> dict[str, Any]:
        """Ask every reachable member for its security summary and compare it."""
        local = security_summary(
            self.node_id, self.node.config, recent_refusals(self.node.transport)
        )
        mine = problems_of(local)
        nodes: list[dict[str, Any]] = [
            {**local, "reachable": True, "agrees": not mine, "problems": mine}
        ]

        async def ask(member: Member) -> dict[str, Any]:
            try:
                summary = await self._control(member.address, CONTROL_TIMEOUT, "auth")
            except CaxtonError as exc:
                return {
                    "node_id": member.node_id,
                    "reachable": False,
                    "agrees": False,
                    "problems": [f"unreachable over the transport: {exc}"],
                }
            if not isinstance(summary, dict):
                summary = {}
            problems = compare(local, summary)
            if summary.get("node_id") != member.node_id:
                problems.append(f"answered as {summary.get('node_id')!r}")
            return {**summary, "reachable": True, "agrees": not problems, "problems": problems}

        nodes += await asyncio.gather(
            *(
                ask(m)
                for m in self.membership.members()
                if m.node_id != self.node_id and m.status in _REACHABLE
            )
        )
        return {"agree": all(n["agrees"] for n in nodes), "nodes": nodes}

    async def remote_leave(self, node_id: str, drain_timeout: float) -> None:
        """Ask ``node_id`` to leave the cluster (it drains, announces and stops)."""
        member = self._member(node_id)
        await self._control(member.address, drain_timeout + 10.0, "leave", drain_timeout)

    # -- routing: the router's resolver ------------------------------------------------

    async def resolve(self, name: str) -> PeerRoute | QueuedRoute | None:
        """Where ``name`` lives when it is not registered here (None: nowhere)."""
        held = self.partition.held(name)
        if held is not None:
            return held
        route = self._routes.get(name)
        if route is not None:
            return route
        pending = self._resolving.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = self._get_loop()
        future: asyncio.Future[PeerRoute | None] = loop.create_future()
        self._resolving[name] = future
        try:
            route = await self._find(name)
        except BaseException:
            future.set_result(None)
            raise
        else:
            future.set_result(route)
            return route
        finally:
            del self._resolving[name]

    async def _find(self, name: str) -> PeerRoute | None:
        self.counts["lookups"] += 1
        route = self._from_registry(name)
        if route is not None:
            return route
        origin = self._reply_routes.get(name)
        if origin is not None:
            member = self._live(origin)
            if member is not None:
                return self._cache(name, self._peer_route(member))
        miss = self._misses.get(name)
        now = time.monotonic()
        if miss is not None and miss[0] == self._generation and now - miss[1] < MISS_TTL:
            return None
        await self._ask_peers(name)
        route = self._from_registry(name)
        if route is None:
            self._misses[name] = (self._generation, now)
            if len(self._misses) > 10_000:
                self._misses.clear()
        return route

    def _from_registry(self, name: str) -> PeerRoute | None:
        for entry in self.registry.lookup(name):
            if entry.node_id == self.node_id or not entry.routable:
                continue
            member = self._live(entry.node_id)
            if member is not None:
                return self._cache(name, self._peer_route(member))
        return None

    def _peer_route(self, member: Member) -> PeerRoute:
        return PeerRoute(self, member.node_id, member.address, wire_version(member))

    def _cache(self, name: str, route: PeerRoute) -> PeerRoute:
        routes = self._routes
        routes[name] = route
        if len(routes) > ROUTE_CACHE:
            del routes[next(iter(routes))]
        return route

    async def _ask_peers(self, name: str) -> None:
        """The registry may be stale: ask every live member whether it hosts ``name``."""
        peers = self._peers()
        if not peers:
            return

        async def ask(member: Member) -> bool:
            since = self.registry.known_version(member.node_id)
            try:
                answer = await self._control(
                    member.address, CONTROL_TIMEOUT, "where", name, list(since) if since else None
                )
            except CaxtonError:
                return False
            if isinstance(answer, list) and answer:
                self._apply(Delta.from_wire(answer[0]))
                return True
            return False

        tasks = [asyncio.ensure_future(ask(m)) for m in peers]
        try:
            for next_done in asyncio.as_completed(tasks):
                if await next_done:
                    return
        finally:
            for task in tasks:
                task.cancel()

    # -- inbound --------------------------------------------------------------------

    def _on_datagram(self, payload: bytes, source: Address) -> None:
        membership = self.node.membership
        if membership is not None:
            membership.on_datagram(payload, source)

    async def _on_frame(self, frame: Frame) -> bytes | None:
        kind = frame.kind
        if kind is FrameKind.MESSAGE:
            if frame.request_id:  # acknowledged (wire version 2)
                return await self.forwarding.on_batch(frame)
            self.forwarding.on_message(frame)
            return None
        if kind is FrameKind.GOSSIP:
            membership = self.node.membership
            if membership is None:
                return None
            reply: bytes | None = await membership.on_gossip_frame(frame)
            return reply
        if kind is FrameKind.CONTROL:
            return await self._on_control(frame)
        log.debug("ignored a %s frame from %s", kind.name, frame.sender)
        return None

    def drop_route(self, name: str, node_id: str) -> None:
        """``node_id`` says ``name`` is not there: forget the routes to it through that node."""
        route = self._routes.get(name)
        if route is not None and route.node_id == node_id:
            del self._routes[name]
        if self._reply_routes.get(name) == node_id:
            del self._reply_routes[name]

    def learn_reply_route(self, sender: str, origin: str | None) -> None:
        """``sender`` (a client waiting for replies, say) is reached through ``origin``
        (another node: a message of ``sender`` came from there, or a node that passed
        one on said so, see :meth:`reply_route`)."""
        if not sender or not origin or origin == self.node_id:
            return
        routes = self._reply_routes
        if routes.get(sender) != origin:
            routes[sender] = origin
            if len(routes) > REPLY_ROUTES:
                routes.popitem(last=False)
        else:
            routes.move_to_end(sender)

    def reply_route(self, sender: str) -> str | None:
        """The node through which ``sender`` is reached: this one when it is registered
        here, else the one its messages came from (None: unknown). A node that passes a
        message of ``sender`` on (a move's hand-over, a stale route) names it, so that
        the receiver learns the sender's node, not the node that passed the message on."""
        router = self.router
        if router is not None and router.is_registered(sender):
            return self.node_id
        return self._reply_routes.get(sender)

    async def _on_control(self, frame: Frame) -> bytes | None:
        op, args = wire.decode_control(frame.payload)
        if op == "push":
            self._apply(Delta.from_wire(args[0]), frame.sender)
            return None
        if op == "pull":
            return wire.pack(self.registry.delta(_version(args[0] if args else None)).to_wire())
        if op == "where":
            name = str(args[0])
            since = _version(args[1] if len(args) > 1 else None)
            hosted = any(
                e.node_id == self.node_id and e.routable for e in self.registry.lookup(name)
            )
            answer = [self.registry.delta(since).to_wire()] if hosted else []
            return wire.pack(answer)
        if op == "miss":
            if frame.sender:
                self.drop_route(str(args[0]), frame.sender)
            return None
        if op in LEASE_OPS:  # lease heartbeats and silence queries: caxton.cluster.lease
            return self.lease.on_control(frame, op, args)
        if op in FAILOVER_OPS:  # deploy, replica, holdings, claim: sealed, see cluster.trust
            return await self.failover.on_control(frame, op, args)
        if op in MOVE_OPS:  # move, move-done, drain: caxton.cluster.moves
            return await self.moves.on_control(frame, op, args)
        if op in NAME_OPS:  # name: a claim of a new agent's name (cluster.names)
            return self.names.on_control(frame, args)
        if op in AGENT_OPS:  # agent: an agent operation forwarded by another node
            return await agent_ops.on_control(self.node, frame, args)
        if op in OPERATION_OPS:  # backup, backup-read, emergency: cluster.operations
            return await self.operations.on_control(frame, op, args)
        if op == "auth":
            refusals = recent_refusals(self.node.transport)
            return wire.pack(security_summary(self.node_id, self.node.config, refusals))
        if op == "ping":
            return wire.pack(self.node_id)
        if op == "verify":
            return wire.pack(consistency_digest(self))
        if op == "leave":
            drain = float(args[0]) if args else 0.0
            self.stop_node_soon(self.leave(drain))
            return wire.pack(True)
        raise ValidationError(f"unknown cluster control operation {op!r}")

    def stop_node_soon(self, first: Awaitable[Any] | None = None, delay: float = 0.0) -> None:
        """Stop the node in the background, after ``first`` (a leave) and ``delay``.

        Not one of the service's own tasks: stopping the node closes this service,
        which cancels those.
        """

        async def stop() -> None:
            try:
                if first is not None:
                    await first
                await asyncio.sleep(delay)
            finally:
                await self.node.stop()

        self._stopper = self._get_loop().create_task(stop())

    # -- the registry -----------------------------------------------------------------

    @hookimpl
    def caxton_agent_deployed(self, node: Node, agent: Agent) -> None:
        if node is self.node:
            self._announce(agent)

    @hookimpl
    def caxton_agent_state_changed(self, node: Node, agent: Agent, old: str, new: str) -> None:
        if node is self.node:
            self._announce(agent)

    @hookimpl
    def caxton_agent_removed(self, node: Node, agent: Agent) -> None:
        if node is self.node:
            self.withdraw(agent.name)

    def _announce(self, agent: Agent) -> None:
        self.names.settle(agent.name, agent.id)
        self.announce(
            agent.name,
            agent.state.value,
            agent_id=agent.id,
            capabilities=agent_capabilities(agent),
        )

    def announce(
        self,
        name: str,
        state: str = "running",
        *,
        agent_id: str = "",
        capabilities: Sequence[str] = (),
    ) -> None:
        """Make a name registered with this node's router known to the cluster.

        Agents are announced by the node itself (from the agent hooks); this is for
        other endpoints a plugin registers with the router.
        """
        entry = self.registry.announce(name, state, agent_id=agent_id, capabilities=capabilities)
        if entry is not None:
            self._local_changed()

    def withdraw(self, name: str) -> None:
        """The name is no longer served here (a tombstone spreads to every member)."""
        if self.registry.withdraw(name) is not None:
            self._local_changed()

    def _local_changed(self) -> None:
        self._generation += 1
        if self._publish_handle is None and self._loop is not None and self.started:
            self._publish_handle = self._loop.call_soon(self._publish)

    def _publish(self) -> None:
        """Push this turn's local changes to every live member; update the metadata."""
        self._publish_handle = None
        delta = self.registry.changes_since(self._pushed)
        self._pushed = delta.to
        payload = wire.encode_control("push", delta.to_wire())
        for member in self._peers():
            self._send_later(member.address, payload)
        self.counts["pushes"] += 1
        self._schedule_meta()

    def _apply(self, delta: Delta, sender: str = "") -> None:
        """Merge a peer's delta; pull when it does not connect to the copy held here."""
        node_id = delta.node_id
        if node_id == self.node_id:
            return
        member = self._live(node_id)
        if member is None:
            return  # failed or left: its agents are not routable
        changes = self.registry.apply(delta)
        if changes is None:
            self._pull(node_id)
            return
        self._changed(changes)

    def _changed(self, changes: list[tuple[str, AgentEntry]]) -> None:
        """Peers' entries changed: drop stale routes, record the events."""
        if changes:
            self._generation += 1
            self.failover.registry_changed(changes)
        for kind, entry in changes:
            self.names.settle(entry.name, entry.agent_id)
            route = self._routes.get(entry.name)
            stale = kind == "unregistered" or not entry.routable
            if route is not None and stale and route.node_id == entry.node_id:
                del self._routes[entry.name]
            if kind != "updated":
                where = "on" if kind == "registered" else "from"
                self.events.record(
                    f"agent-{kind}",
                    f"Agent '{entry.name}' {kind} {where} {entry.node_id}",
                    node_id=entry.node_id,
                    level="debug",
                )

    def _behind(self, member: Member) -> bool:
        """Does ``member`` gossip a newer registry version than the copy held here?"""
        advertised = advertised_version(member)
        known = self.registry.known_version(member.node_id)
        return advertised is not None and (known is None or advertised > known)

    def _check_version(self, member: Member) -> None:
        """Pull from ``member`` when its gossiped registry version is newer than ours."""
        if self._behind(member):
            self._pull(member.node_id)

    def _pull(self, node_id: str) -> None:
        if node_id in self._pulling or not self.started:
            return
        task = self._get_loop().create_task(self._pull_from(node_id))
        self._pulling[node_id] = task

    async def _pull_from(self, node_id: str) -> None:
        try:
            for _attempt in range(3):
                member = self._live(node_id)
                if member is None:
                    return
                since = self.registry.known_version(node_id)
                try:
                    answer = await self._control(
                        member.address, CONTROL_TIMEOUT, "pull", list(since) if since else None
                    )
                    delta = Delta.from_wire(answer)
                except CaxtonError as exc:
                    log.debug("registry pull from %s failed: %s", node_id, exc)
                    await asyncio.sleep(0.2)
                    continue
                self.counts["pulls"] += 1
                if self._live(node_id) is None:
                    return
                changes = self.registry.apply(delta)
                if changes is None:
                    continue
                self._changed(changes)
                return
        finally:
            self._pulling.pop(node_id, None)
            member = self._live(node_id)
            if member is not None and self.started and self._behind(member):
                self._get_loop().call_later(0.5, self._pull, node_id)

    # -- membership -------------------------------------------------------------------

    def _on_member_event(self, event: MemberEvent) -> None:
        member = event.member
        node_id = member.node_id
        kind = event.kind
        if node_id == self.node_id:
            return
        self._generation += 1
        if kind is EventKind.LEFT:
            self.lease.lease.forget(node_id)
        elif kind in (EventKind.JOINED, EventKind.ALIVE):
            self.lease.beat()  # a member (back) in the view: renew with it now
        if kind in _GONE:
            text = {
                EventKind.FAILED: f"Node {node_id} detected as failed",
                EventKind.LEFT: f"Node {node_id} left the cluster",
                EventKind.REMOVED: f"Node {node_id} forgotten",
            }[kind]
            level = "warning" if kind is EventKind.FAILED else "info"
            # Forwards stuck dialling it fail now, not after the dial's retries.
            self.transport.forget_peer(member.address)
            self._forget_node(node_id, text, kind.value, level)
            return
        if kind is EventKind.JOINED:
            self._invalidate_node(node_id)
            self.events.record("joined", f"Node {node_id} joined the cluster", node_id=node_id)
            # A node that comes back starts a new registry epoch: forget the old one.
            known = self.registry.known_version(node_id)
            advertised = advertised_version(member)
            if known is not None and advertised is not None and advertised[0] != known[0]:
                self.registry.drop_node(node_id)
            self._check_version(member)
            if self._pushed:
                self._send_full(member)
            self.rebalance.member_joined(node_id)  # coordination.cluster.rebalance = on-join
        elif kind is EventKind.SUSPECT:
            self.events.record(
                "suspect",
                f"Node {node_id} suspected of failure",
                node_id=node_id,
                level="warning",
            )
        elif kind is EventKind.ALIVE:
            self.events.record("alive", f"Node {node_id} refuted the suspicion", node_id=node_id)
        elif kind is EventKind.UPDATED:
            self._check_version(member)
            self._heard_update(member)
        self._mode_changed()

    def _refused(self, node_id: str, line: str) -> None:
        self.events.record("refused", line, node_id=node_id, level="warning")

    def _heard_update(self, member: Member) -> None:
        at = member.meta.get("at")
        if isinstance(at, int | float):
            delay = time.time() - at
            if 0.0 <= delay < 300.0:  # beyond: the clocks disagree, not gossip
                self.convergence.pending.append(delay)

    def _send_full(self, member: Member) -> None:
        """Give a member that just (re)joined our agents at once."""
        payload = wire.encode_control("push", self.registry.delta(None).to_wire())
        self._send_later(member.address, payload)

    def _forget_node(self, node_id: str, text: str, kind: str, level: str = "info") -> None:
        changes = self.registry.drop_node(node_id)
        self.partition.node_gone(node_id, kind, changes)
        self._invalidate_node(node_id)
        for name in [n for n, origin in self._reply_routes.items() if origin == node_id]:
            del self._reply_routes[name]
        details = {"agents": len(changes)} if changes else {}
        self.events.record(kind, text, node_id=node_id, level=level, details=details)
        if changes:
            self.events.record(
                "agents-dropped",
                f"{len(changes)} agents of {node_id} dropped from the registry",
                node_id=node_id,
            )
        self._mode_changed()

    def _invalidate_node(self, node_id: str) -> None:
        self._generation += 1
        for name in [n for n, r in self._routes.items() if r.node_id == node_id]:
            del self._routes[name]

    def decision_stale(self) -> bool:
        """Has the lease lapsed since the mode was last decided? (Then decide again
        before a write: the lapse timer may not have fired yet on a busy loop.)"""
        return not self._deciding and self._decided_until <= self._get_loop().time()

    def _mode_changed(self) -> None:
        self._decided_until = self.lease.expires_at()
        try:
            decision = self.decision()
        except Exception:
            log.exception("the partition decision failed")
            return
        self._deciding = True
        try:
            self.partition.mode_changed(decision)
        finally:
            self._deciding = False
        mode = decision.mode if decision is not None else PartitionMode.READ_WRITE
        if mode is not self._mode:
            if self._mode is not None:
                level = "info" if mode is PartitionMode.READ_WRITE else "warning"
                reason = decision.reason if decision is not None else ""
                self.events.record(
                    "mode", f"Node {self.node_id} is now {mode.value} ({reason})", level=level
                )
            self._mode = mode

    # -- metadata ---------------------------------------------------------------------

    def _refresh_load(self) -> bool:
        """Sample CPU and memory; True when they moved enough to be worth gossiping
        (5 CPU points, 10% of memory, or another agent count): every update is news
        that every member receives."""
        from caxton.api.resources import CpuSampler, memory_rss_bytes

        if self._cpu is None:
            self._cpu = CpuSampler(min_interval=0.0)
        load = {
            "agents": len(self.node.agents) if self.node.agents is not None else 0,
            "cpu": round(self._cpu.percent()),
            "memory": memory_rss_bytes() // (1 << 20) << 20,  # whole MiB
        }
        last = self._load
        changed = (
            not last
            or load["agents"] != last["agents"]
            or abs(load["cpu"] - last["cpu"]) >= 5
            or abs(load["memory"] - last["memory"]) > last["memory"] // 10
        )
        if changed:
            self._load = load
        return changed

    async def _load_loop(self) -> None:
        while True:
            await asyncio.sleep(LOAD_INTERVAL)
            if self._refresh_load():
                self._schedule_meta()

    def _schedule_meta(self) -> None:
        if self._meta_handle is None and self._loop is not None:
            self._meta_handle = self._loop.call_later(META_DEBOUNCE, self._update_meta)

    def isolation_changed(self) -> None:
        """Gossip whether this node is isolated (``caxton cluster isolate``): the others
        stop routing to it and placing on it (:mod:`caxton.emergency`)."""
        self._update_meta()

    def _update_meta(self) -> None:
        self._meta_handle = None
        membership = self.membership
        if membership is None:
            return
        self._load["agents"] = len(self.node.agents) if self.node.agents is not None else 0
        meta = dict(membership.local_member().meta)
        meta.update(self._load)
        meta["reg"] = list(self.registry.version)
        emergency = self.node.emergency
        meta["isolated"] = bool(emergency is not None and emergency.isolated)
        meta["at"] = round(time.time(), 3)  # for the others' convergence time
        meta["wire_min"], meta["wire"] = self.admission.supported
        try:
            membership.update_metadata(meta)
        except CaxtonError as exc:
            log.warning("could not gossip this node's metadata: %s", exc)

    # -- helpers ----------------------------------------------------------------------

    def _dns_seeds(self) -> DnsSeeds | None:
        """The DNS name to find seeds in, when ``discovery = "dns"`` (docs/deployment.md)."""
        settings = self.node.config["coordination.cluster"]
        if settings["discovery"] != "dns":
            return None
        bound_port = self.node.cluster_address[1] if self.node.cluster_address else 0
        return DnsSeeds(
            settings["dns_name"], settings["dns_port"] or bound_port, settings["dns_server"]
        )

    def _peers(self) -> list[Member]:
        return [
            m
            for m in self.membership.members()
            if m.node_id != self.node_id and m.status in _REACHABLE
        ]

    def _live(self, node_id: str) -> Member | None:
        try:
            member: Member = self.membership.member(node_id)
        except NotFound:
            return None
        return member if member.status in _REACHABLE else None

    def _member(self, node_id: str) -> Member:
        member: Member = self.membership.member(node_id)
        return member

    async def _control(self, address: Address, timeout: float, op: str, *args: Any) -> Any:
        payload = wire.encode_control(op, *args)
        try:
            answer = await self.transport.request(address, FrameKind.CONTROL, payload, timeout)
        except asyncio.TimeoutError:
            raise TransportError(
                f"no answer from {format_address(address)} within {timeout:g}s"
            ) from None
        return wire.unpack(answer)

    def _send_later(self, address: Address, payload: bytes) -> None:
        self._spawn(self._send(address, payload))

    async def _send(self, address: Address, payload: bytes) -> None:
        try:
            await self.transport.send(address, FrameKind.CONTROL, payload)
        except CaxtonError as exc:
            log.debug("control frame to %s failed: %s", format_address(address), exc)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self._get_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop


def _version(value: Any) -> tuple[int, int] | None:
    """A registry version from the wire (``[epoch, counter]`` or nil)."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ValidationError("malformed registry version")
    return (value[0], value[1])


def wire_version(member: Member) -> int:
    """The newest MESSAGE frame version ``member`` speaks (``wire`` in its metadata; a
    node that gossips none predates the key and speaks version 1)."""
    value = member.meta.get("wire")
    return value if isinstance(value, int) and value > 0 else wire.FIRST_VERSION


def advertised_version(member: Member) -> tuple[int, int] | None:
    """The registry version ``member`` gossips in its metadata (``reg``), if any."""
    value = member.meta.get("reg")
    if isinstance(value, list | tuple) and len(value) == 2:
        with contextlib.suppress(TypeError, ValueError):
            return (int(value[0]), int(value[1]))
    return None
