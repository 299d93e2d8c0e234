"""A sans-IO fixed-list membership: the configured seeds, health-checked.

No gossip and no dissemination: every ``probe_interval`` each listed peer gets the same
``PING`` the SWIM core sends, and its status is ``alive`` while it answers and
``failed`` once it has not answered for ``suspicion_multiplier`` probe rounds. A peer's
node id is learned from its answers (until then it is listed as ``HOST:PORT``).
A leaving node tells each peer directly (``LEFT``), so the others list it as ``left``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from caxton.drivers.membership import Member, MemberStatus
from caxton.drivers.transport import Address
from caxton.membership import codec
from caxton.membership.codec import MalformedMessage, MsgType
from caxton.membership.core import Datagram, EventKind, MemberEvent, MembershipStats, Outbox
from caxton.membership.settings import SwimSettings
from caxton.units import format_address


@dataclass
class _Peer:
    address: Address
    node_id: str | None = None
    status: MemberStatus = MemberStatus.FAILED
    last_ack: float | None = None
    incarnation: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> Member:
        node_id = self.node_id or format_address(self.address)
        return Member(node_id, self.address, self.status, self.incarnation, dict(self.meta))


class StaticCore:
    """The fixed-list counterpart of :class:`~caxton.membership.swim_core.SwimCore`."""

    def __init__(
        self,
        node_id: str,
        address: Address,
        settings: SwimSettings | None = None,
        *,
        now: float,
        rng: random.Random | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.settings = settings or SwimSettings()
        self.rng = rng or random.Random()
        self.stats = MembershipStats()
        self.leaving = False
        self._meta = dict(meta or {})
        self._incarnation = 0
        self._peers: dict[Address, _Peer] = {}
        self._pending: dict[int, tuple[Address, float]] = {}
        self._user_pings: set[int] = set()
        self._seq = 0
        self._outbox = Outbox()
        self._builder = codec.DatagramBuilder(node_id, address, self.settings.datagram_budget)
        self._now = now
        self._next_probe = now + self.rng.uniform(0, self.settings.probe_interval)
        for seed in self.settings.seeds:
            self._add(seed)

    @property
    def failure_timeout(self) -> float:
        """Silence after which a peer is failed."""
        s = self.settings
        return s.suspicion_multiplier * s.probe_interval + s.probe_timeout

    @property
    def leave_done(self) -> bool:
        return self.leaving

    def _add(self, address: Address) -> None:
        address = (address[0], int(address[1]))
        if address != self.address and address not in self._peers:
            self._peers[address] = _Peer(address)

    def local_member(self) -> Member:
        status = MemberStatus.LEFT if self.leaving else MemberStatus.ALIVE
        return Member(self.node_id, self.address, status, self._incarnation, dict(self._meta))

    def members(self) -> list[Member]:
        return [self.local_member()] + [peer.snapshot() for peer in self._peers.values()]

    def cluster_size(self) -> int:
        alive = sum(1 for p in self._peers.values() if p.status is MemberStatus.ALIVE)
        return 1 + alive

    def next_deadline(self) -> float:
        return self._next_probe

    def drain(self) -> Outbox:
        outbox, self._outbox = self._outbox, Outbox()
        return outbox

    # -- commands ---------------------------------------------------------------------

    def join(self, now: float, seeds: Iterable[Address]) -> list[int]:
        """Add ``seeds`` to the list and probe them now; there is no state to sync."""
        self._now = now
        for seed in seeds:
            self._add(seed)
        self._probe_all()
        return []

    def leave(self, now: float) -> None:
        self._now = now
        if not self.leaving:
            self.leaving = True
            for peer in self._peers.values():
                self._send(peer.address, [codec.left(self._incarnation, self.node_id)])

    def update_meta(self, now: float, meta: Mapping[str, Any]) -> None:
        """Kept locally: a static list does not disseminate metadata."""
        self._meta = dict(meta)
        self._incarnation += 1

    def remove(self, now: float, node_id: str) -> Member:
        for address, peer in list(self._peers.items()):
            if peer.snapshot().node_id == node_id:
                if peer.status is MemberStatus.ALIVE:
                    raise ValueError(f"{node_id} is alive")
                del self._peers[address]
                self._event(EventKind.REMOVED, peer)
                return peer.snapshot()
        raise KeyError(node_id)

    def ping(self, now: float, node_id: str) -> int:
        for peer in self._peers.values():
            if peer.snapshot().node_id == node_id:
                seq = self._probe(peer, now)
                self._user_pings.add(seq)
                return seq
        raise KeyError(node_id)

    # -- inputs -----------------------------------------------------------------------

    def handle_datagram(self, now: float, payload: bytes, source: Address) -> None:
        self._now = now
        self.stats.datagrams_received += 1
        self.stats.datagram_bytes_received += len(payload)
        try:
            header, messages = codec.decode_datagram(payload)
        except MalformedMessage:
            self.stats.malformed += 1
            return
        self.stats.messages_received += len(messages)
        for message in messages:
            kind = message[0]
            if kind == MsgType.PING and message[2] in ("", self.node_id) and not self.leaving:
                self._send(header.address, [codec.ack(message[1], self._incarnation)])
            elif kind == MsgType.ACK:
                self._on_ack(message[1], header)
            elif kind == MsgType.LEFT and message[2] == header.sender_id:
                peer = self._peers.get(header.address)
                if peer is not None and peer.status is not MemberStatus.LEFT:
                    peer.node_id = header.sender_id
                    peer.status = MemberStatus.LEFT
                    self._event(EventKind.LEFT, peer)

    def handle_sync(self, now: float, payload: bytes) -> bytes | None:
        return None

    def sync_done(self, now: float, token: int, response: bytes | None) -> bool:
        return False

    def tick(self, now: float) -> None:
        self._now = now
        if now >= self._next_probe and not self.leaving:
            self._next_probe = now + self.settings.probe_interval
            self._probe_all()
        elif self.leaving:
            self._next_probe = now + 3600.0
        for peer in self._peers.values():
            silent = now - (peer.last_ack if peer.last_ack is not None else -1e18)
            if peer.status is MemberStatus.ALIVE and silent > self.failure_timeout:
                peer.status = MemberStatus.FAILED
                self._event(EventKind.FAILED, peer)
        self._pending = {
            seq: (address, sent)
            for seq, (address, sent) in self._pending.items()
            if now - sent < self.failure_timeout
        }

    # -- internals --------------------------------------------------------------------

    def _probe_all(self) -> None:
        for peer in self._peers.values():
            self._probe(peer, self._now)

    def _probe(self, peer: _Peer, now: float) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._pending[self._seq] = (peer.address, now)
        self.stats.probes += 1
        self._send(peer.address, [codec.ping(self._seq, peer.node_id or "")])
        return self._seq

    def _on_ack(self, seq: int, header: codec.Header) -> None:
        pending = self._pending.pop(seq, None)
        if pending is None:
            return
        address, sent = pending
        if seq in self._user_pings:
            self._user_pings.discard(seq)
            self._outbox.pongs.append((seq, self._now - sent))
        peer = self._peers.get(address)
        if peer is None:
            return
        peer.node_id = header.sender_id
        peer.last_ack = self._now
        if peer.status is not MemberStatus.ALIVE:
            peer.status = MemberStatus.ALIVE
            self._event(EventKind.JOINED, peer)

    def _send(self, address: Address, messages: list[bytes]) -> None:
        payload = self._builder.build(messages)
        self.stats.datagrams_sent += 1
        self.stats.datagram_bytes_sent += len(payload)
        self.stats.messages_sent += len(messages)
        self._outbox.datagrams.append(Datagram(address, payload))

    def _event(self, kind: EventKind, peer: _Peer) -> None:
        self._outbox.events.append(MemberEvent(kind, peer.snapshot(), self._now))
