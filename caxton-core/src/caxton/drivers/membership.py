"""The membership driver: who is in the cluster (entry-point group ``caxton.membership``).

Core ships ``swim`` (SWIM with Lifeguard) and ``static`` (a fixed list). Drivers report
changes through the membership hooks (``caxton_member_joined`` and friends).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from caxton.drivers.base import Driver
from caxton.drivers.transport import Address


class MemberStatus(str, Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    FAILED = "failed"
    LEFT = "left"


@dataclass
class Member:
    node_id: str
    address: Address
    status: MemberStatus = MemberStatus.ALIVE
    incarnation: int = 0
    #: Gossiped metadata: agents, cpu, memory, version, region, zone, labels, api address.
    meta: Mapping[str, Any] = field(default_factory=dict)


class Membership(Driver):
    kind: ClassVar[str] = "membership"

    @abstractmethod
    async def join(self, seeds: Sequence[Address]) -> int:
        """Contact ``seeds`` and merge views; return how many seeds answered."""

    @abstractmethod
    async def leave(self, timeout: float) -> None:
        """Announce a graceful leave and wait up to ``timeout`` for it to spread."""

    @abstractmethod
    def members(self) -> list[Member]:
        """Every known member, this node included, in any status."""

    @abstractmethod
    def local_member(self) -> Member:
        """This node's own entry."""

    @abstractmethod
    def update_metadata(self, meta: Mapping[str, Any]) -> None:
        """Replace this node's gossiped metadata (spread with the next gossip round)."""
