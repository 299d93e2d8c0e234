"""The loop guard: messages that agents send each other without end are refused.

Two agents that answer each other's messages (an echo beside an echo, a forwarder whose
forwards come back) keep messaging forever without any outside input, at the node's full
speed, starving everyone else. Every message an agent sends while handling a message
counts one hop more than that message; a message from outside the node's agents (a REST
client, another node, a timer) counts 0. A send that would go past :data:`MAX_HOPS`
is refused with ``Status.DENIED``: the chain ends there, and only the agents in it see
it. The counts live here, by message id (the newest :data:`REMEMBERED` ids), not in the
message: a chain that crosses nodes starts counting again on each node.
"""

from __future__ import annotations

__all__ = ["MAX_HOPS", "REMEMBERED", "LoopGuard"]

#: Longest chain of agent-to-agent messages without outside input. A negotiation of a
#: few hundred rounds fits; an unending ping-pong stops within a fraction of a second.
MAX_HOPS = 1000
#: Message ids whose hop count is kept (the oldest are forgotten: counted as 0).
REMEMBERED = 100_000


class LoopGuard:
    """Hop counts of the messages this node's agents sent, by message id."""

    __slots__ = ("_hops", "max_hops", "refused")

    def __init__(self, max_hops: int = MAX_HOPS) -> None:
        self.max_hops = max_hops
        self._hops: dict[str, int] = {}
        #: Sends refused for going past max_hops.
        self.refused = 0

    def next_hop(self, handling_message_id: str | None) -> int:
        """The hop count of a message sent while handling ``handling_message_id``."""
        if handling_message_id is None:
            return 0
        return self._hops.get(handling_message_id, 0) + 1

    def allow(self, message_id: str, hops: int) -> bool:
        """Record ``message_id`` at ``hops``; False (counted) past :attr:`max_hops`."""
        if hops > self.max_hops:
            self.refused += 1
            return False
        if hops:
            table = self._hops
            table[message_id] = hops
            if len(table) > REMEMBERED:
                del table[next(iter(table))]
        return True
