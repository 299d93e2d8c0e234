"""A sans-IO SWIM state machine with the Lifeguard refinements.

:class:`SwimCore` owns no socket, task or clock. It is fed the current time with every
call (``handle_datagram``, ``handle_sync``, ``sync_done``, ``tick``) and answers with
outbound work, collected by :meth:`SwimCore.drain`: datagrams to send, push-pull
exchanges to run over the reliable transport, and membership events. Given the same
seed and the same inputs it does the same thing, which is what lets the simulator in
:mod:`caxton.testing.membership` run a 100-node cluster with loss, partitions and
pauses in seconds, for thousands of seeds.

The protocol follows HashiCorp memberlist:

- Every probe round one member gets a ``PING``: our successor on a ring of the live
  members that every node shuffles the same way for the same round of a shared clock
  (wall time), so every member is probed by some other member every round, and by a
  different one each round. (memberlist's independent round-robin orders leave a
  member unprobed for a round about a third of the time at N=5, which is most of the
  spread in its failure detection time.) No
  ``ACK`` within ``probe_timeout``: ``indirect_probes`` other members are asked to
  ping it (``PING_REQ``) and answer ``NACK`` when they get no reply either. No ack by
  the end of the round: the member is *suspect*.
- A suspect has until its suspicion timeout to refute, by gossiping ``ALIVE`` with a
  higher incarnation. The timeout starts at ``suspicion_multiplier * max(1, log10(n))
  * probe_interval`` times ``suspicion_max_timeout_mult`` and shrinks towards the
  minimum as independent members confirm the suspicion (Lifeguard).
- Local health awareness (Lifeguard): missed acks and nacks, and having to refute,
  raise a score that stretches this node's probe timeout and round, so a slow or
  overloaded node does not accuse healthy ones; successful probes lower it.
- News (alive, suspect, dead, left) is piggybacked on probes and acks and gossiped
  every ``gossip_interval`` to ``gossip_fanout`` members, each message at most
  ``retransmit_mult * ceil(log10(n + 1))`` times.
- Push-pull: a full state exchange on join and every ``push_pull_interval`` (scaled up
  above 32 members).
- Beyond memberlist: every ``rejoin_interval`` a node that has failed members, or seeds
  that are not among its live members, runs a push-pull with one of them, so views
  merge again after a partition heals or a long outage. And refutations take the
  direct path too: a suspect that pings us hears of the suspicion in our ack, and a
  node told of a suspicion about itself answers the teller in the same datagram as
  its ack, so a lossy node's refutation does not depend on gossip alone.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from caxton.drivers.membership import Member, MemberStatus
from caxton.drivers.transport import Address
from caxton.membership import codec
from caxton.membership.broadcasts import BroadcastQueue, retransmit_limit
from caxton.membership.codec import MalformedMessage, MsgType, StateEntry
from caxton.membership.core import (
    Datagram,
    EventKind,
    GossipDelegate,
    MemberEvent,
    MembershipStats,
    Outbox,
    SyncRequest,
)
from caxton.membership.settings import SwimSettings

ALIVE = MemberStatus.ALIVE
SUSPECT = MemberStatus.SUSPECT
FAILED = MemberStatus.FAILED
LEFT = MemberStatus.LEFT
_LIVE = (ALIVE, SUSPECT)


@dataclass
class _Node:
    node_id: str
    address: Address
    incarnation: int
    status: MemberStatus
    meta: dict[str, Any]
    changed_at: float
    #: Gossip rounds that will still include this member after it was declared failed.
    dead_gossip_left: int = 0

    def snapshot(self) -> Member:
        return Member(self.node_id, self.address, self.status, self.incarnation, dict(self.meta))

    def entry(self) -> StateEntry:
        return StateEntry(self.node_id, self.address, self.incarnation, self.status, self.meta)


class Suspicion:
    """A suspicion timer that shrinks with independent confirmations (Lifeguard).

    ``k`` confirmations are expected; with ``n`` of them the timeout is
    ``max - (max - min) * log(n + 1) / log(k + 1)``, never below ``min``.
    """

    def __init__(self, accuser: str, k: int, minimum: float, maximum: float, start: float) -> None:
        self.confirmations = {accuser}
        self.k = k
        self.minimum = minimum
        self.maximum = max(maximum, minimum)
        self.start = start
        self.n = 0
        self.deadline = start + (self.minimum if k < 1 else self.maximum)

    def confirm(self, accuser: str) -> bool:
        """Count ``accuser``'s confirmation; True if it was new and shortened the timer."""
        if self.n >= self.k or accuser in self.confirmations:
            return False
        self.confirmations.add(accuser)
        self.n += 1
        fraction = math.log(self.n + 1) / math.log(self.k + 1)
        timeout = self.maximum - fraction * (self.maximum - self.minimum)
        self.deadline = self.start + max(self.minimum, timeout)
        return True


class Awareness:
    """Local health: a score in ``[0, max_multiplier - 1]`` that stretches timeouts."""

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max_multiplier - 1)

    def scale(self, duration: float) -> float:
        return duration * (self.score + 1)


@dataclass
class _Probe:
    seq: int
    target_id: str
    sent_at: float
    timeout_at: float
    deadline: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass
class _Relay:
    origin: Address
    origin_seq: int
    #: When to tell the origin we got no answer either (None: not asked, or told).
    nack_at: float | None
    #: Until when a late ack is still forwarded.
    expires: float


#: An indirect prober nacks after this fraction of probe_timeout, so the nack reaches
#: the origin before its probe round ends (nacks arriving later count as missed and
#: would make a healthy origin doubt itself).
NACK_FRACTION = 0.8


def suspicion_bounds(settings: SwimSettings, cluster_size: int) -> tuple[float, float]:
    """Shortest and longest suspicion timeout for a cluster of ``cluster_size`` members."""
    scale = max(1.0, math.log10(max(1, cluster_size)))
    minimum = settings.suspicion_multiplier * scale * settings.probe_interval
    return minimum, minimum * settings.suspicion_max_timeout_mult


def push_pull_scale(interval: float, cluster_size: int, threshold: int = 32) -> float:
    """Stretch the push-pull interval above ``threshold`` members (as memberlist)."""
    if cluster_size <= threshold:
        return interval
    multiplier = math.ceil(math.log2(cluster_size) - math.log2(threshold)) + 1
    return interval * multiplier


class SwimCore:
    """The SWIM protocol state of one node. See the module docstring for the protocol.

    ``now`` is any monotonic clock in seconds, the same one for every call.
    ``clock_offset`` turns it into a clock the members share (the driver passes wall
    time minus its monotonic clock): it only picks the probe ring of each round, so a
    skewed clock costs some probe coverage, never correctness.
    """

    def __init__(
        self,
        node_id: str,
        address: Address,
        settings: SwimSettings | None = None,
        *,
        now: float,
        rng: random.Random | None = None,
        meta: Mapping[str, Any] | None = None,
        incarnation: int = 0,
        clock_offset: float = 0.0,
    ) -> None:
        self.node_id = node_id
        self.clock_offset = clock_offset
        self.address = address
        self.settings = settings or SwimSettings()
        self.rng = rng or random.Random()
        self.stats = MembershipStats()
        self.awareness = Awareness(self.settings.awareness_max_multiplier)
        self.seeds: list[Address] = list(self.settings.seeds)
        self.leaving = False
        self._me = _Node(node_id, address, incarnation, ALIVE, dict(meta or {}), now)
        self._nodes: dict[str, _Node] = {node_id: self._me}
        self._builder = codec.DatagramBuilder(node_id, address, self.settings.datagram_budget)
        self._broadcasts = BroadcastQueue(self.settings.retransmit_mult)
        self._user_broadcasts = BroadcastQueue(self.settings.retransmit_mult)
        #: Set by the driver's owner to carry other state on gossip (agent registry).
        self.delegate: GossipDelegate | None = None
        #: Set by the driver's owner: ``admission(node_id, meta)`` answers why a member
        #: may not join this node's view (its wire protocol cannot be spoken here), or
        #: None. A refused member is never added nor updated: memberlist's merge
        #: delegate, which Consul uses to keep incompatible nodes out.
        self.admission: Callable[[str, Mapping[str, Any]], str | None] | None = None
        self._suspicions: dict[str, Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._probe: _Probe | None = None
        self._recheck_turn = False
        self._seq = 0
        self._syncs: dict[int, SyncRequest] = {}
        #: Seed address -> node id that answered there (seeds are often host names).
        self._seed_ids: dict[Address, str] = {}
        self._user_pings: dict[int, float] = {}
        self._outbox = Outbox()
        #: Answers to the sender of the datagram being handled (sent with its ack).
        self._direct: list[bytes] = []
        self._now = now
        s = self.settings
        # Stagger the periodic work so nodes started together do not act in lockstep.
        #: Where in each shared round this node probes: all nodes within a tenth of
        #: the round, mid-round so clock skew below half a round keeps rings agreed.
        self._probe_phase = self.rng.uniform(0.45, 0.55) * s.probe_interval
        self._next_probe = self._probe_slot(now)
        self._next_gossip = now + self.rng.uniform(0, s.gossip_interval)
        self._next_push_pull = now + self.rng.uniform(0.5, 1.0) * s.push_pull_interval
        self._next_rejoin = now + self.rng.uniform(0.5, 1.0) * s.rejoin_interval
        self._next_reap = now + 10.0
        # Announce ourselves: whoever hears it relays it, like any other news.
        self._queue_alive(self._me)

    # -- queries ------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    def local_member(self) -> Member:
        return self._me.snapshot()

    def members(self) -> list[Member]:
        return [node.snapshot() for node in self._nodes.values()]

    def member(self, node_id: str) -> Member | None:
        node = self._nodes.get(node_id)
        return None if node is None else node.snapshot()

    def status_of(self, node_id: str) -> MemberStatus | None:
        node = self._nodes.get(node_id)
        return None if node is None else node.status

    def cluster_size(self) -> int:
        """Members believed alive or suspect, this node included."""
        return sum(1 for node in self._nodes.values() if node.status in _LIVE)

    @property
    def leave_done(self) -> bool:
        """After :meth:`leave`: the announcement was sent as often as gossip sends news."""
        if not self.leaving:
            return False
        peers = any(n.status in _LIVE for n in self._nodes.values() if n is not self._me)
        return not peers or self.node_id not in self._broadcasts

    def next_deadline(self) -> float:
        """When :meth:`tick` has work next (it may be called earlier or later)."""
        deadline = self._next_reap
        if self._broadcasts or self._user_broadcasts:  # idle gossip needs no wake-ups
            deadline = min(deadline, self._next_gossip)
        if not self.leaving:
            deadline = min(deadline, self._next_probe, self._next_push_pull, self._next_rejoin)
        probe = self._probe
        if probe is not None:
            deadline = min(deadline, probe.deadline if probe.indirect_sent else probe.timeout_at)
        for suspicion in self._suspicions.values():
            deadline = min(deadline, suspicion.deadline)
        for relay in self._relays.values():
            deadline = min(deadline, relay.nack_at or relay.expires, relay.expires)
        return deadline

    def drain(self) -> Outbox:
        """Take the outbound work produced since the last call."""
        outbox, self._outbox = self._outbox, Outbox()
        return outbox

    # -- commands -----------------------------------------------------------------

    def join(self, now: float, seeds: Iterable[Address]) -> list[int]:
        """Start a push-pull with every seed; remember them for automatic rejoin.

        Returns the tokens of the exchanges started (:meth:`sync_done` reports each).
        """
        self._now = now
        tokens = []
        for seed in seeds:
            seed = (seed[0], int(seed[1]))
            if seed not in self.seeds:
                self.seeds.append(seed)
            if seed != self.address:
                tokens.append(self._start_sync(seed, "join").token)
        return tokens

    def leave(self, now: float) -> None:
        """Announce a graceful leave; keep calling :meth:`tick` until :attr:`leave_done`."""
        self._now = now
        if self.leaving:
            return
        self.leaving = True
        self._probe = None
        self._me.status = LEFT
        self._me.changed_at = now
        announcement = codec.left(self._me.incarnation, self.node_id)
        # Tell every member directly, then gossip it as well: an epidemic can miss a
        # member now and then, and a member that missed it would probe us, find us
        # gone and report a failure instead of a leave.
        for node in self._nodes.values():
            if node is not self._me and node.status in _LIVE:
                self._emit_datagram(node.address, [announcement])
        self._broadcasts.queue(self.node_id, announcement)
        self._gossip_round()

    def update_meta(self, now: float, meta: Mapping[str, Any]) -> None:
        """Replace this node's metadata; spreads as ``ALIVE`` with a new incarnation.

        Once leaving, it is kept here only: a new incarnation would outrank the ``left``
        announcement and bring this node back into the others' views (a drain changes
        the agent count just before the leave)."""
        self._now = now
        self._me.meta = dict(meta)
        if self.leaving:
            return
        self._me.incarnation += 1
        self._queue_alive(self._me)

    def remove(self, now: float, node_id: str) -> Member:
        """Force a failed member out (``caxton cluster remove --force``): it becomes
        ``left`` everywhere, so nobody retries it. Raises KeyError/ValueError."""
        self._now = now
        node = self._nodes[node_id]
        if node is self._me or node.status in _LIVE:
            raise ValueError(f"{node_id} is {node.status.value}")
        if node.status is FAILED:
            self._on_dead(node_id, node.incarnation, node_id, left=True)
        return node.snapshot()

    def gossip(self, now: float, key: str, payload: bytes) -> None:
        """Spread a delegate's message to every member (piggybacked, retransmitted like
        membership news). A newer message with the same ``key`` replaces an unsent
        older one. Raises ValueError when it cannot fit in one datagram."""
        self._now = now
        message = codec.user(key, payload)
        if len(message) > self._builder.room:
            raise ValueError(
                f"a gossip message may take {self._builder.room} bytes, this one takes "
                f"{len(message)}; send large state through the delegate's local_state()"
            )
        self._user_broadcasts.queue(key, message)

    def ping(self, now: float, node_id: str) -> int:
        """Ping a member on behalf of a user (``caxton cluster ping``); the answer comes
        out in :attr:`Outbox.pongs` under the returned token. Raises KeyError."""
        self._now = now
        node = self._nodes[node_id]
        seq = self._next_seq()
        self._user_pings[seq] = now
        self._send(node.address, [codec.ping(seq, node_id)])
        return seq

    # -- inputs -------------------------------------------------------------------

    def handle_datagram(self, now: float, payload: bytes, source: Address) -> None:
        """One inbound datagram. ``source`` is informational: replies go to the address
        the sender names in the datagram."""
        self._now = now
        self.stats.datagrams_received += 1
        self.stats.datagram_bytes_received += len(payload)
        try:
            header, messages = codec.decode_datagram(payload)
        except MalformedMessage:
            self.stats.malformed += 1
            return
        if header.sender_id == self.node_id:
            return
        self.stats.messages_received += len(messages)
        # Pings last, so their acks can carry our answers to the rest of the datagram
        # (a refutation travels in the same packet as the ack the prober waits for).
        self._direct = []
        for message in messages:
            if message[0] != MsgType.PING:
                self._dispatch(header, message)
        for message in messages:
            if message[0] == MsgType.PING:
                self._dispatch(header, message)
        if self._direct:
            self._send(header.address, self._direct)
            self._direct = []

    def handle_sync(self, now: float, payload: bytes) -> bytes | None:
        """An inbound push-pull request: merge it, answer with our full state.

        The merge happens before the answer is built, so the answer already carries our
        refutations of what the requester believed about us (this speeds up healing).
        Returns None for a malformed request.
        """
        self._now = now
        self.stats.syncs_received += 1
        self.stats.sync_bytes_received += len(payload)
        try:
            remote = codec.decode_sync(payload)
        except MalformedMessage:
            self.stats.malformed += 1
            return None
        if remote.header.sender_id != self.node_id:
            self._merge(remote.header.sender_id, remote.entries)
            self._merge_delegate_state(remote.delegate_state)
        reply = self._sync_payload("reply")
        self.stats.sync_bytes_sent += len(reply)
        return reply

    def sync_done(self, now: float, token: int, response: bytes | None) -> bool:
        """The reply to a :class:`SyncRequest` (None: failed). True if it was merged."""
        self._now = now
        request = self._syncs.pop(token, None)
        if request is None:
            return False
        if response is None:
            self.stats.syncs_failed += 1
            return False
        self.stats.sync_bytes_received += len(response)
        try:
            remote = codec.decode_sync(response)
        except MalformedMessage:
            self.stats.malformed += 1
            self.stats.syncs_failed += 1
            return False
        if request.address in self.seeds:
            self._seed_ids[request.address] = remote.header.sender_id
        if remote.header.sender_id != self.node_id:
            self._merge(remote.header.sender_id, remote.entries)
            self._merge_delegate_state(remote.delegate_state)
        return True

    def tick(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        self._now = now
        for node_id, suspicion in list(self._suspicions.items()):
            if suspicion.deadline <= now:
                node = self._nodes.get(node_id)
                del self._suspicions[node_id]
                if node is not None and node.status is SUSPECT:
                    self._on_dead(node_id, node.incarnation, self.node_id, left=False)
        for seq, relay in list(self._relays.items()):
            if relay.nack_at is not None and relay.nack_at <= now:
                relay.nack_at = None
                self._send(relay.origin, [codec.nack(relay.origin_seq)])
            if relay.expires <= now:
                del self._relays[seq]
        probe = self._probe
        if probe is not None and not probe.indirect_sent and now >= probe.timeout_at:
            self._probe_indirectly(probe)
        if probe is not None and now >= probe.deadline:
            self._probe_failed(probe)
        if not self.leaving and now >= self._next_probe:
            self._start_probe()
        if now >= self._next_gossip:
            self._next_gossip = now + self.settings.gossip_interval
            self._gossip_round()
        if not self.leaving and now >= self._next_push_pull:
            self._next_push_pull = now + push_pull_scale(
                self.settings.push_pull_interval,
                self.cluster_size(),
                self.settings.push_pull_scale_threshold,
            )
            self._periodic_sync()
        if not self.leaving and now >= self._next_rejoin:
            self._next_rejoin = now + self.settings.rejoin_interval
            self._rejoin()
        if now >= self._next_reap:
            self._next_reap = now + 10.0
            self._reap()
            self._user_pings = {s: t for s, t in self._user_pings.items() if now - t < 60.0}

    # -- probing ------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _probe_slot(self, earliest: float) -> float:
        """The first time from ``earliest`` on that falls on this node's probe phase.

        Probing at the same point of each shared round bounds the wait from a death to
        the first probe of the dead member to one round (rings change every round).
        """
        interval = self.settings.probe_interval
        shared = earliest + self.clock_offset - self._probe_phase
        return math.ceil(shared / interval) * interval + self._probe_phase - self.clock_offset

    def _next_probe_target(self) -> _Node | None:
        """Our successor on this round's ring of live members (see the module docstring)."""
        ring = [n for n in self._nodes.values() if n is self._me or n.status in _LIVE]
        if len(ring) < 2:
            return None
        shared_round = math.floor((self._now + self.clock_offset) / self.settings.probe_interval)
        salt = (shared_round & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")

        def place(node: _Node) -> bytes:
            return hashlib.blake2b(node.node_id.encode(), digest_size=8, key=salt).digest()

        ring.sort(key=place)
        return ring[(ring.index(self._me) + 1) % len(ring)]

    def _suspect_to_recheck(self) -> _Node | None:
        """Every other round while we suspect someone, probe a suspect again.

        The ping carries our suspicion and the suspect answers with its refutation in
        the same datagram as the ack, so a node that missed the gossiped refutation
        (it is rare, but it happens, and more with loss) is corrected long before its
        suspicion runs out, instead of declaring a live member failed.
        """
        self._recheck_turn = not self._recheck_turn
        if not self._recheck_turn or not self._suspicions:
            return None
        suspects = [
            node
            for node_id in self._suspicions
            if (node := self._nodes.get(node_id)) is not None and node.status is SUSPECT
        ]
        return self.rng.choice(suspects) if suspects else None

    def _start_probe(self) -> None:
        now = self._now
        round_length = self.awareness.scale(self.settings.probe_round)
        self._next_probe = self._probe_slot(now + round_length - self.settings.probe_interval / 2)
        target = self._suspect_to_recheck() or self._next_probe_target()
        if target is None:
            return
        self.stats.probes += 1
        seq = self._next_seq()
        self._probe = _Probe(
            seq,
            target.node_id,
            now,
            timeout_at=now + self.awareness.scale(self.settings.probe_timeout),
            # The round ends when the next one starts (slots are rounded: not a hair later).
            deadline=min(now + round_length, self._next_probe),
        )
        messages = [codec.ping(seq, target.node_id)]
        if target.status is SUSPECT:
            # Tell the suspect directly so it can refute at once (memberlist does too).
            messages.append(codec.suspect(target.incarnation, target.node_id, self.node_id))
        self._send(target.address, messages)

    def _probe_indirectly(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        target = self._nodes.get(probe.target_id)
        if target is None or target.status not in _LIVE:
            return
        helpers = [
            n
            for n in self._nodes.values()
            if n.status is ALIVE and n is not self._me and n is not target
        ]
        chosen = self.rng.sample(helpers, min(self.settings.indirect_probes, len(helpers)))
        messages = [codec.ping_req(probe.seq, target.node_id, target.address, True)]
        if target.status is SUSPECT:
            # The helpers pass the suspicion on with their ping, so the suspect's
            # refutation comes back with the forwarded ack, even if we cannot reach it.
            messages.append(codec.suspect(target.incarnation, target.node_id, self.node_id))
        for helper in chosen:
            self._send(helper.address, messages)
        probe.expected_nacks = len(chosen)

    def _probe_failed(self, probe: _Probe) -> None:
        self._probe = None
        self.stats.probes_failed += 1
        if probe.expected_nacks > 0:
            self.awareness.apply(max(0, probe.expected_nacks - probe.nacks))
        else:
            self.awareness.apply(1)
        target = self._nodes.get(probe.target_id)
        if target is not None and target.status in _LIVE:
            self._on_suspect(target.node_id, target.incarnation, self.node_id)

    # -- dissemination ------------------------------------------------------------

    def _send(self, address: Address, messages: list[bytes]) -> None:
        room = self._builder.room - sum(len(m) for m in messages)
        messages = messages + self._take_broadcasts(room)
        self._emit_datagram(address, messages)

    def _take_broadcasts(self, room: int) -> list[bytes]:
        """Membership news first, then the delegate's messages in the space left."""
        size = self.cluster_size()
        taken = self._broadcasts.take(room, size)
        if self._user_broadcasts:
            taken += self._user_broadcasts.take(room - sum(map(len, taken)), size)
        return taken

    def _emit_datagram(self, address: Address, messages: list[bytes]) -> None:
        payload = self._builder.build(messages)
        self.stats.datagrams_sent += 1
        self.stats.datagram_bytes_sent += len(payload)
        self.stats.messages_sent += len(messages)
        self._outbox.datagrams.append(Datagram(address, payload))

    def _gossip_round(self) -> None:
        if not self._broadcasts and not self._user_broadcasts:
            return
        live = [n for n in self._nodes.values() if n.status in _LIVE and n is not self._me]
        targets = self.rng.sample(live, min(self.settings.gossip_fanout, len(live)))
        targets += [
            n for n in self._nodes.values() if n.status is FAILED and n.dead_gossip_left > 0
        ]
        for target in targets:
            messages = self._take_broadcasts(self._builder.room)
            if not messages:
                break
            if target.status is FAILED:
                target.dead_gossip_left -= 1
            self._emit_datagram(target.address, messages)

    @staticmethod
    def _alive_message(node: _Node) -> bytes:
        return codec.alive(node.incarnation, node.node_id, node.address, node.meta)

    def _queue_alive(self, node: _Node) -> None:
        self._broadcasts.queue(node.node_id, self._alive_message(node))

    # -- push-pull and rejoin -----------------------------------------------------

    def _sync_payload(self, purpose: str) -> bytes:
        entries = [node.entry() for node in self._nodes.values()]
        return codec.encode_sync(
            self.node_id, self.address, purpose, entries, self._delegate_state()
        )

    def _start_sync(self, address: Address, purpose: str) -> SyncRequest:
        token = self._next_seq()
        request = SyncRequest(
            token, address, self._sync_payload(purpose), self.settings.sync_timeout, purpose
        )
        self._syncs[token] = request
        self.stats.syncs_sent += 1
        self.stats.sync_bytes_sent += len(request.payload)
        self._outbox.syncs.append(request)
        return request

    def _periodic_sync(self) -> None:
        peers = [n for n in self._nodes.values() if n.status is ALIVE and n is not self._me]
        if peers:
            self._start_sync(self.rng.choice(peers).address, "sync")

    def rejoin_candidates(self) -> list[Address]:
        """Seeds that are not live members, and failed members still within
        ``reconnect_timeout``: where :meth:`tick` looks for a lost cluster."""
        live = {n.address for n in self._nodes.values() if n.status in _LIVE}
        candidates = [
            seed
            for seed in self.seeds
            if seed not in live and self.status_of(self._seed_ids.get(seed, "")) not in _LIVE
        ]
        candidates += [
            n.address for n in self._nodes.values() if n.status is FAILED and n.address not in live
        ]
        return list(dict.fromkeys(candidates))

    def _rejoin(self) -> None:
        if any(r.purpose == "rejoin" for r in self._syncs.values()):
            return
        candidates = self.rejoin_candidates()
        if candidates:
            self._start_sync(self.rng.choice(candidates), "rejoin")

    def _reap(self) -> None:
        s = self.settings
        for node in list(self._nodes.values()):
            age = self._now - node.changed_at
            if (node.status is FAILED and age > s.reconnect_timeout) or (
                node.status is LEFT and node is not self._me and age > s.left_retention
            ):
                del self._nodes[node.node_id]
                self._broadcasts.drop(node.node_id)
                self._event(EventKind.REMOVED, node)

    # -- message handling ---------------------------------------------------------

    def _dispatch(self, header: codec.Header, message: list[Any]) -> None:
        kind = message[0]
        if kind == MsgType.PING:
            _, seq, target_id = message
            if not target_id or target_id == self.node_id:
                reply = [codec.ack(seq, self._me.incarnation), *self._direct]
                self._direct = []
                sender = self._nodes.get(header.sender_id)
                if sender is not None and sender.status is SUSPECT:
                    # Buddy system, in reverse: a suspect that pings us learns at once
                    # that we suspect it, and answers us directly.
                    reply.append(codec.suspect(sender.incarnation, sender.node_id, self.node_id))
                self._send(header.address, reply)
        elif kind == MsgType.ACK:
            self._on_ack(message[1], message[2])
        elif kind == MsgType.NACK:
            if self._probe is not None and self._probe.seq == message[1]:
                self._probe.nacks += 1
        elif kind == MsgType.PING_REQ:
            _, seq, target_id, host, port, want_nack = message
            local_seq = self._next_seq()
            timeout = self.settings.probe_timeout
            nack_at = self._now + NACK_FRACTION * timeout if want_nack else None
            self._relays[local_seq] = _Relay(header.address, seq, nack_at, self._now + timeout)
            self._send((host, port), [codec.ping(local_seq, target_id)])
        elif kind == MsgType.ALIVE:
            _, incarnation, node_id, host, port, meta = message
            self._on_alive(node_id, incarnation, (host, port), meta)
        elif kind == MsgType.SUSPECT or kind == MsgType.DEAD:
            _, incarnation, node_id, accuser = message
            if node_id == self.node_id:
                # Refute if needed, and answer the sender directly: it may have missed
                # an earlier refutation, and gossip to it may be slow or lossy.
                if incarnation >= self._me.incarnation:
                    self._on_suspect(node_id, incarnation, accuser)
                if not self.leaving:
                    self._direct.append(self._alive_message(self._me))
            elif kind == MsgType.SUSPECT:
                self._on_suspect(node_id, incarnation, accuser)
            else:
                self._on_dead(node_id, incarnation, accuser, left=False)
        elif kind == MsgType.LEFT:
            self._on_dead(message[2], message[1], message[2], left=True)
        elif kind == MsgType.USER:
            self._on_user(message[1], message[2])

    def _on_ack(self, seq: int, incarnation: int) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.origin, [codec.ack(relay.origin_seq, incarnation)])
            return
        probe = self._probe
        if probe is not None and probe.seq == seq:
            self._probe = None
            self.awareness.apply(-1)
            self._cleared_by_ack(probe.target_id, incarnation)
            if not probe.indirect_sent:
                rtt = (self._now - probe.sent_at) * 1000.0
                previous = self.stats.probe_rtt_ms
                self.stats.probe_rtt_ms = rtt if not previous else 0.875 * previous + 0.125 * rtt
        elif seq in self._user_pings:
            self._outbox.pongs.append((seq, self._now - self._user_pings.pop(seq)))

    def _on_user(self, key: str, payload: bytes) -> None:
        delegate = self.delegate
        if delegate is None:
            return
        try:
            news = delegate.notify(key, payload)
        except Exception:
            self.stats.delegate_errors += 1
            return
        if news:
            self._user_broadcasts.queue(key, codec.user(key, payload))

    def _merge_delegate_state(self, state: bytes | None) -> None:
        if state is None or self.delegate is None:
            return
        try:
            self.delegate.merge_remote_state(state)
        except Exception:
            self.stats.delegate_errors += 1

    def _delegate_state(self) -> bytes | None:
        if self.delegate is None:
            return None
        try:
            return self.delegate.local_state()
        except Exception:
            self.stats.delegate_errors += 1
            return None

    def _cleared_by_ack(self, node_id: str, incarnation: int) -> None:
        """A suspect answered a probe (perhaps through a helper) with an incarnation
        newer than the one we suspect: it has refuted, we only missed the news.

        The suspicion ends, but the stored incarnation stays: the full ``ALIVE`` (with
        the metadata of that incarnation) still applies when it arrives.
        """
        node = self._nodes.get(node_id)
        if node is not None and node.status is SUSPECT and incarnation > node.incarnation:
            node.status = ALIVE
            node.changed_at = self._now
            self._suspicions.pop(node_id, None)
            self._event(EventKind.ALIVE, node)

    def _merge(self, sender_id: str, entries: Iterable[StateEntry]) -> None:
        for entry in entries:
            if entry.status is ALIVE:
                self._on_alive(entry.node_id, entry.incarnation, entry.address, entry.meta)
            elif entry.status is LEFT:
                self._on_dead(entry.node_id, entry.incarnation, entry.node_id, left=True)
            else:
                # Dead is merged as suspect, so a live node gets a chance to refute.
                self._on_suspect(entry.node_id, entry.incarnation, sender_id)

    def _refute(self, incarnation: int) -> None:
        self._me.incarnation = max(self._me.incarnation, incarnation) + 1
        self.stats.refutations += 1
        self.awareness.apply(1)
        self._queue_alive(self._me)

    def _on_alive(
        self, node_id: str, incarnation: int, address: Address, meta: Mapping[str, Any]
    ) -> None:
        node = self._nodes.get(node_id)
        news = node is None or (node is not self._me and incarnation > node.incarnation)
        if news and self.admission is not None and self.admission(node_id, meta) is not None:
            self.stats.refused += 1
            return
        if node is self._me:
            stale = (address, dict(meta)) != (self.address, self._me.meta)
            if not self.leaving and (
                incarnation > self._me.incarnation
                or (incarnation == self._me.incarnation and stale)
            ):
                self._refute(incarnation)
            return
        if node is None:
            node = _Node(node_id, address, incarnation, ALIVE, dict(meta), self._now)
            self._nodes[node_id] = node
            self._queue_alive(node)
            self._event(EventKind.JOINED, node)
            return
        if incarnation <= node.incarnation:
            return
        previous = node.status
        changed = (address, dict(meta)) != (node.address, node.meta)
        node.incarnation = incarnation
        node.address = address
        node.meta = dict(meta)
        node.status = ALIVE
        self._suspicions.pop(node_id, None)
        self._queue_alive(node)
        if previous is not ALIVE:
            node.changed_at = self._now
        if previous in (FAILED, LEFT):
            self._event(EventKind.JOINED, node)
        elif previous is SUSPECT:
            self._event(EventKind.ALIVE, node)
        elif changed:
            self._event(EventKind.UPDATED, node)

    def _accusation_target(self, node_id: str, incarnation: int) -> _Node | None:
        """The member a suspect/failed/left report is about; None when the report is
        stale, about an unknown member, or about us (then we refute it)."""
        node = self._nodes.get(node_id)
        if node is None or incarnation < node.incarnation:
            return None
        if node is self._me:
            if not self.leaving:
                self._refute(incarnation)
            return None
        return node

    def _on_suspect(self, node_id: str, incarnation: int, accuser: str) -> None:
        node = self._accusation_target(node_id, incarnation)
        if node is None:
            return
        if node.status is SUSPECT:
            suspicion = self._suspicions.get(node_id)
            if suspicion is not None and suspicion.confirm(accuser):
                self._broadcasts.queue(node_id, codec.suspect(incarnation, node_id, accuser))
            return
        if node.status is not ALIVE:
            return
        node.incarnation = incarnation
        node.status = SUSPECT
        node.changed_at = self._now
        size = self.cluster_size()
        expected = self.settings.suspicion_multiplier - 2
        if size - 2 < expected:
            expected = 0
        minimum, maximum = suspicion_bounds(self.settings, size)
        self._suspicions[node_id] = Suspicion(accuser, expected, minimum, maximum, self._now)
        self.stats.suspicions += 1
        self._broadcasts.queue(node_id, codec.suspect(incarnation, node_id, accuser))
        self._event(EventKind.SUSPECT, node)

    def _on_dead(self, node_id: str, incarnation: int, accuser: str, *, left: bool) -> None:
        node = self._accusation_target(node_id, incarnation)
        if node is None:
            return
        if node.status is LEFT or (node.status is FAILED and not left):
            return
        node.incarnation = incarnation
        node.status = LEFT if left else FAILED
        node.changed_at = self._now
        node.dead_gossip_left = 0 if left else self.settings.gossip_to_dead
        self._suspicions.pop(node_id, None)
        if left:
            self._broadcasts.queue(node_id, codec.left(incarnation, node_id))
        else:
            self._broadcasts.queue(node_id, codec.dead(incarnation, node_id, accuser))
        self._event(EventKind.LEFT if left else EventKind.FAILED, node)

    def _event(self, kind: EventKind, node: _Node) -> None:
        self._outbox.events.append(MemberEvent(kind, node.snapshot(), self._now))

    def retransmit_limit(self) -> int:
        return retransmit_limit(self.settings.retransmit_mult, self.cluster_size())
