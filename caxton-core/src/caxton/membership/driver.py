"""Running a sans-IO membership core on asyncio with the node's transport.

The node wires two inbound paths to the driver (see docs/membership.md):

- every datagram the transport receives: ``membership.on_datagram(payload, source)``;
- every reliable frame of kind ``FrameKind.GOSSIP``: ``await
  membership.on_gossip_frame(frame)``, whose returned bytes are the response.

Outbound, the driver uses ``context.services["transport"]``: ``send_datagram`` for
probes and gossip, ``request(addr, FrameKind.GOSSIP, payload, timeout)`` for push-pull.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from caxton.config import CORE_SECTIONS, ConfigSection
from caxton.drivers.base import DriverContext
from caxton.drivers.membership import Member, Membership, MemberStatus
from caxton.drivers.partition import ClusterView
from caxton.drivers.transport import Address, Frame, FrameKind
from caxton.errors import (
    CaxtonError,
    ConfigError,
    Conflict,
    NotFound,
    PluginError,
    ValidationError,
)
from caxton.membership import codec
from caxton.membership.core import (
    Datagram,
    EventKind,
    GossipDelegate,
    MemberEvent,
    MembershipCore,
    SyncRequest,
)
from caxton.membership.settings import SECTION, SwimSettings, parse_seeds
from caxton.units import format_address, parse_address

if TYPE_CHECKING:
    from caxton.drivers.transport import Transport

log = logging.getLogger("caxton.membership")

#: Event kind -> the hook that announces it to plugins.
HOOKS: dict[EventKind, str] = {
    EventKind.JOINED: "caxton_member_joined",
    EventKind.SUSPECT: "caxton_member_suspect",
    EventKind.FAILED: "caxton_member_failed",
    EventKind.LEFT: "caxton_member_left",
}

_REACHABLE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)
#: Datagrams to one peer that may wait on the transport at once; more are dropped.
MAX_SENDS_IN_FLIGHT = 16

#: An in-process listener: called with every :class:`MemberEvent`, on the event loop.
Listener = Callable[[MemberEvent], None]


def _core_section() -> ConfigSection:
    return next(s for s in CORE_SECTIONS if s.path == SECTION)


def check_metadata(meta: Any) -> dict[str, Any]:
    """Metadata a node may gossip: a map with string keys, at most 512 bytes encoded."""
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) for k in meta):
        raise ValidationError("node metadata must be a mapping with string keys")
    try:
        size = codec.meta_size(meta)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"node metadata cannot be encoded ({exc}); use strings, numbers, booleans, "
            f"lists and maps"
        ) from None
    if size > codec.META_MAX_BYTES:
        raise ValidationError(
            f"node metadata is {size} bytes encoded, over the {codec.META_MAX_BYTES}-byte "
            f"limit; gossip less (labels, not documents)"
        )
    return dict(meta)


class CoreDriver(Membership):
    """Base of the core membership drivers: a sans-IO core, a loop timer, the transport.

    Subclasses say which core to build (:meth:`make_core`).
    """

    #: The section the node passes as ``config`` (declared by core).
    config_section: ClassVar[ConfigSection | None] = _core_section()
    #: Entry-point name, for messages.
    name: ClassVar[str] = ""
    #: The sans-IO core the driver runs (constructed like :class:`SwimCore`).
    core_class: ClassVar[Callable[..., MembershipCore]]

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        super().__init__(config, context)
        self.settings = SwimSettings.from_config(self.config)
        self._core: MembershipCore | None = None
        self._meta: dict[str, Any] = {}
        self._listeners: list[Listener] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Datagram sends in flight per peer: a transport may have to dial first, and
        #: a dead peer must not hold up probes to the others.
        self._in_flight: dict[Address, int] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sync_waiters: dict[int, asyncio.Future[bool]] = {}
        self._pings: dict[int, asyncio.Future[float]] = {}
        self._changed = asyncio.Event()
        self._delegate: GossipDelegate | None = None
        self._admission: Callable[[str, Mapping[str, Any]], str | None] | None = None
        self._closed = False
        self.send_errors = 0

    # -- construction -------------------------------------------------------------------

    def make_core(self, address: Address, meta: Mapping[str, Any], now: float) -> MembershipCore:
        """Build the sans-IO core for this node (:attr:`core_class`)."""
        return self.core_class(
            self.context.node_id, address, self.settings, now=now, rng=random.Random(), meta=meta
        )

    @property
    def core(self) -> MembershipCore:
        if self._core is None:
            raise PluginError(f"the {self.name} membership driver is not started")
        return self._core

    @property
    def transport(self) -> Transport:
        transport = self.context.services.get("transport")
        if transport is None:
            raise PluginError(
                f"the {self.name} membership driver needs a transport driver, and none is "
                f'loaded; select one with [plugins] transport = "tcp" (or "quic")'
            )
        return transport  # type: ignore[no-any-return]

    def advertise_address(self) -> Address:
        """Where peers reach this node: ``advertise_addr``, else the bound address."""
        node = self.context.services.get("node")
        bound = getattr(node, "cluster_address", None)
        bind = _address_key("bind_addr", str(self.config.get("bind_addr") or "127.0.0.1:7946"))
        if bound:
            bind = (str(bound[0]), int(bound[1]))
        advertise = str(self.config.get("advertise_addr") or "auto").strip()
        if advertise and advertise != "auto":
            if ":" in advertise and not advertise.endswith("]"):
                return _address_key("advertise_addr", advertise)
            return (advertise.strip("[]"), bind[1])
        if bind[0] in ("0.0.0.0", "::", ""):
            return (_local_ip(), bind[1])
        return bind

    def initial_metadata(self) -> dict[str, Any]:
        """Metadata the node itself knows: version, region, zone, labels, API address."""
        node = self.context.services.get("node")
        meta: dict[str, Any] = {}
        if node is None:
            return meta
        with contextlib.suppress(Exception):
            meta["version"] = str(node.version)
            section = node.config["node"]
            for key in ("region", "zone"):
                if section.get(key):
                    meta[key] = section[key]
            if section.get("labels"):
                meta["labels"] = dict(section["labels"])
            if node.api_address:
                meta["api"] = format_address(node.api_address)
        return meta

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._core is not None:
            return
        self.transport  # noqa: B018 - fail early, with the install hint, when missing
        self._loop = asyncio.get_running_loop()
        try:
            meta = check_metadata({**self.initial_metadata(), **self._meta})
        except ValidationError as exc:
            raise ConfigError(
                f"this node's gossiped metadata is unusable ({exc}); shorten node.labels"
            ) from None
        self._core = self.make_core(self.advertise_address(), meta, self._loop.time())
        if self._delegate is not None:
            self._attach_delegate(self._delegate)
        if hasattr(self._core, "admission"):
            self._core.admission = self._admission
        self._pump()

    async def close(self) -> None:
        # From here on nothing reaches the core: a datagram that arrives while the
        # transport is still open must not re-arm the timer of a closed driver.
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [*self._tasks, *self._sends]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        waiters: list[asyncio.Future[Any]] = [*self._sync_waiters.values(), *self._pings.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.cancel()
        self._sync_waiters.clear()
        self._pings.clear()

    # -- the Membership interface -------------------------------------------------------

    async def join(self, seeds: Sequence[Address | str]) -> int:
        """Push-pull with every seed at once; return how many answered. Seeds are kept
        and retried in the background while they are not live members."""
        addresses = parse_seeds([s if isinstance(s, str) else tuple(s) for s in seeds])
        loop = self._require_loop()
        tokens = self.core.join(loop.time(), addresses)
        waiters = [self._sync_waiter(token) for token in tokens]
        self._pump()
        if not waiters:
            return 0
        results = await asyncio.gather(*waiters, return_exceptions=True)
        return sum(1 for result in results if result is True)

    async def leave(self, timeout: float) -> None:
        """Announce the leave and wait up to ``timeout`` for gossip to carry it."""
        loop = self._require_loop()
        self.core.leave(loop.time())
        self._pump()
        deadline = loop.time() + timeout
        while not self.core.leave_done and loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
        # Let the sender hand the last datagrams to the transport.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drained(), max(0.0, deadline - loop.time()) + 0.1)

    def members(self) -> list[Member]:
        return self.core.members()

    def local_member(self) -> Member:
        return self.core.local_member()

    def update_metadata(self, meta: Mapping[str, Any]) -> None:
        meta = check_metadata(meta)
        if self._core is None:
            self._meta = meta
            return
        self.core.update_meta(self._require_loop().time(), meta)
        self._pump()

    # -- more than the interface --------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every membership event (joined, updated, suspect,
        alive, failed, left, removed); returns a function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def set_gossip_delegate(self, delegate: GossipDelegate | None) -> None:
        """Carry another component's state on membership gossip (the agent registry):
        see :class:`caxton.membership.core.GossipDelegate`. Before or after start."""
        self._delegate = delegate
        if self._core is not None:
            self._attach_delegate(delegate)

    def set_admission(self, admission: Callable[[str, Mapping[str, Any]], str | None]) -> None:
        """Keep members out of this node's view: ``admission(node_id, meta)`` answers why
        a member announcing ``meta`` may not join (None: it may). A refused member is
        neither added nor updated, so it never counts in quorums nor gets traffic.
        Before or after start; cores without the check (static) ignore it."""
        self._admission = admission
        if self._core is not None and hasattr(self._core, "admission"):
            self._core.admission = admission

    def gossip(self, key: str, payload: bytes) -> None:
        """Spread ``payload`` to every member through the delegate channel (at most one
        datagram: about 1.3 KB). Raises ValidationError when too large, PluginError when
        this driver does not gossip."""
        if not hasattr(self.core, "gossip"):
            raise PluginError(
                f"the {self.name} membership driver does not gossip; use membership = "
                f'"swim" to spread state between nodes'
            )
        try:
            self.core.gossip(self._require_loop().time(), key, payload)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        self._pump()

    def _attach_delegate(self, delegate: GossipDelegate | None) -> None:
        if not hasattr(self.core, "delegate"):
            raise PluginError(f"the {self.name} membership driver does not gossip")
        self.core.delegate = delegate

    def cluster_view(self, quorum_size: int | None = None) -> ClusterView:
        """This node's view for the partition policy: known members are those not
        left; reachable ones are alive or suspect (this node included)."""
        members = self.core.members()
        known = [m.node_id for m in members if m.status is not MemberStatus.LEFT]
        reachable = [m.node_id for m in members if m.status in _REACHABLE]
        return ClusterView(self.context.node_id, known, reachable, quorum_size)

    def cluster_size_estimate(self) -> int:
        """Members believed alive or suspect, this node included."""
        return self.core.cluster_size()

    def member(self, node_id: str) -> Member:
        for member in self.core.members():
            if member.node_id == node_id:
                return member
        raise NotFound(f"No member named {node_id!r}; see `caxton cluster members`")

    async def wait_for_members(self, count: int | None = None, timeout: float = 30.0) -> bool:
        """Wait until ``count`` members (default ``bootstrap_expect``) are alive."""
        expected = self.settings.bootstrap_expect if count is None else count
        loop = self._require_loop()
        deadline = loop.time() + timeout
        while self.core.cluster_size() < expected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def ping(self, node_id: str, timeout: float = 2.0) -> float:
        """Round-trip time in seconds of one probe to ``node_id`` (``caxton cluster ping``).

        Raises NotFound for an unknown member and TransportError-like CaxtonError when
        no answer comes within ``timeout``.
        """
        self.member(node_id)
        loop = self._require_loop()
        try:
            token = self.core.ping(loop.time(), node_id)
        except KeyError:
            raise NotFound(f"No member named {node_id!r}") from None
        future: asyncio.Future[float] = loop.create_future()
        self._pings[token] = future
        self._pump()
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise CaxtonError(
                f"{node_id} did not answer a ping within {timeout:g}s; check that it runs "
                f"and that its gossip port is reachable"
            ) from None
        finally:
            self._pings.pop(token, None)

    def remove(self, node_id: str) -> Member:
        """Force a failed member out (``caxton cluster remove --node N --force``)."""
        try:
            return self._apply(lambda now: self.core.remove(now, node_id))
        except KeyError:
            raise NotFound(f"No member named {node_id!r}") from None
        except ValueError as exc:
            raise Conflict(
                f"refusing to remove {node_id}: {exc}; only failed members can be removed "
                f"(a live node leaves with `caxton cluster leave`)"
            ) from None

    def stats(self) -> dict[str, Any]:
        """Traffic counters and health (for metrics and the bandwidth figure)."""
        core = self.core
        data: dict[str, Any] = core.stats.as_dict()
        data["send_errors"] = self.send_errors
        data["cluster_size"] = core.cluster_size()
        members = core.members()
        data["nodes_total"] = sum(1 for m in members if m.status is not MemberStatus.LEFT)
        data["nodes_alive"] = sum(1 for m in members if m.status is MemberStatus.ALIVE)
        awareness = getattr(core, "awareness", None)
        data["health_score"] = awareness.score if awareness is not None else 0
        return data

    # -- inbound, wired by the node -----------------------------------------------------

    def on_datagram(self, payload: bytes, source: Address) -> None:
        """Every datagram the transport receives (a :data:`DatagramHandler`)."""
        if self._core is None or self._loop is None or self._closed:
            return
        self._core.handle_datagram(self._loop.time(), payload, source)
        self._pump()

    async def on_gossip_frame(self, frame: Frame) -> bytes | None:
        """A ``FrameKind.GOSSIP`` request (push-pull); the returned bytes are the reply."""
        if self._core is None or self._loop is None or self._closed:
            return None
        reply = self._core.handle_sync(self._loop.time(), frame.payload)
        self._pump()
        return reply

    # -- internals ----------------------------------------------------------------------

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise PluginError(f"the {self.name} membership driver is not started")
        return self._loop

    def _apply(self, action: Callable[[float], Member]) -> Member:
        result = action(self._require_loop().time())
        self._pump()
        return result

    def _sync_waiter(self, token: int) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = self._require_loop().create_future()
        self._sync_waiters[token] = future
        return future

    def _pump(self) -> None:
        """Carry out what the core asked for, then re-arm its timer."""
        core, loop = self._core, self._loop
        if core is None or loop is None or self._closed:
            return
        outbox = core.drain()
        for datagram in outbox.datagrams:
            self._send(datagram)
        for request in outbox.syncs:
            task = asyncio.ensure_future(self._sync(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for token, rtt in outbox.pongs:
            future = self._pings.get(token)
            if future is not None and not future.done():
                future.set_result(rtt)
        for event in outbox.events:
            self._announce(event)
        self._changed.set()
        deadline = core.next_deadline()
        if self._timer is not None:
            # uvloop's call_at returns a plain Handle (no when()) for a past deadline.
            when = getattr(self._timer, "when", None)
            if when is not None and when() == deadline:
                return
            self._timer.cancel()
        self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._core is not None and self._loop is not None and not self._closed:
            self._core.tick(self._loop.time())
            self._pump()

    def _announce(self, event: MemberEvent) -> None:
        hook_name = HOOKS.get(event.kind)
        if hook_name is not None:
            node = self.context.services.get("node")
            try:
                getattr(self.context.hook, hook_name)(node=node, member=event.member)
            except Exception:
                log.exception("a %s hook implementation failed", hook_name)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("a membership listener failed on %s", event.kind.value)
        log.debug("member %s %s", event.member.node_id, event.kind.value)

    def _send(self, datagram: Datagram) -> None:
        peer = datagram.address
        if self._in_flight.get(peer, 0) >= MAX_SENDS_IN_FLIGHT:
            self.send_errors += 1  # datagrams may be lost; this peer is not taking them
            return
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        task = asyncio.ensure_future(self._send_one(datagram))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_one(self, datagram: Datagram) -> None:
        try:
            await self.transport.send_datagram(datagram.address, datagram.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.send_errors += 1
            log.debug("gossip to %s failed: %s", format_address(datagram.address), exc)
        finally:
            left = self._in_flight.pop(datagram.address, 1) - 1
            if left > 0:
                self._in_flight[datagram.address] = left

    async def _drained(self) -> None:
        while self._sends:
            await asyncio.wait(set(self._sends))

    async def _sync(self, request: SyncRequest) -> None:
        response: bytes | None
        try:
            response = await self.transport.request(
                request.address, FrameKind.GOSSIP, request.payload, request.timeout
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = None
            log.debug(
                "push-pull (%s) with %s failed: %s",
                request.purpose,
                format_address(request.address),
                exc,
            )
        if self._closed:
            return
        loop = self._require_loop()
        merged = self.core.sync_done(loop.time(), request.token, response)
        waiter = self._sync_waiters.pop(request.token, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(merged)
        self._pump()


def _address_key(key: str, value: str) -> Address:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise ConfigError(f"{SECTION}.{key}: {exc}") from None


def _local_ip() -> str:
    """The address other hosts most likely reach us on (no packet is sent)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return str(s.getsockname()[0])
    return "127.0.0.1"
