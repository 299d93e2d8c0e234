"""The piggyback queue: membership news retransmitted a limited number of times.

As memberlist's ``TransmitLimitedQueue``: one pending message per member (newer news
about a node replaces older), the least-transmitted messages go first, and a message is
dropped after ``retransmit_mult * ceil(log10(n + 1))`` transmissions, which is enough
for an epidemic to reach every one of ``n`` members with high probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def retransmit_limit(retransmit_mult: int, cluster_size: int) -> int:
    return retransmit_mult * max(1, math.ceil(math.log10(cluster_size + 1)))


@dataclass(order=True)
class _Broadcast:
    transmits: int
    order: int  # newest first among equal transmit counts: -sequence
    key: str = field(compare=False)
    payload: bytes = field(compare=False)


class BroadcastQueue:
    def __init__(self, retransmit_mult: int = 4) -> None:
        self.retransmit_mult = retransmit_mult
        self._items: dict[str, _Broadcast] = {}
        self._sequence = 0
        #: Keys whose message reached its retransmit limit since the last check.
        self.finished: set[str] = set()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def queue(self, key: str, payload: bytes) -> None:
        """Queue ``payload`` as the current news about ``key`` (replacing older news)."""
        self._sequence += 1
        self._items[key] = _Broadcast(0, -self._sequence, key, payload)
        self.finished.discard(key)

    def transmits(self, key: str) -> int | None:
        item = self._items.get(key)
        return None if item is None else item.transmits

    def take(self, room: int, cluster_size: int, overhead: int = 0) -> list[bytes]:
        """Messages fitting in ``room`` bytes (``overhead`` extra per message), counted sent."""
        if not self._items or room <= 0:
            return []
        limit = retransmit_limit(self.retransmit_mult, cluster_size)
        chosen: list[bytes] = []
        for item in sorted(self._items.values()):
            size = len(item.payload) + overhead
            if size > room:
                continue
            room -= size
            chosen.append(item.payload)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[item.key]
                self.finished.add(item.key)
            if room < 8:
                break
        return chosen

    def drop(self, key: str) -> None:
        self._items.pop(key, None)
