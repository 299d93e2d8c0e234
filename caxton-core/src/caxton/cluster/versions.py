"""Which members this node can talk to: the wire protocol range each node gossips.

Every node gossips ``version`` (its Caxton release, shown by ``caxton cluster members``)
and the range of cluster wire protocol versions it speaks: ``wire`` (the newest,
:data:`caxton.cluster.wire.MESSAGE_VERSION`) and ``wire_min`` (the oldest,
:data:`caxton.cluster.wire.OLDEST_VERSION`). A node that gossips neither predates them
and speaks version 1 only. Two nodes can cluster when their ranges overlap; the
supported skew of a rolling upgrade is therefore this wire version and the previous one
(docs/design/0003-wire-protocol-versioning.md).

:class:`WireAdmission` is the membership driver's admission check
(``set_admission``): a member whose range does not overlap this node's is kept out of
the view (never added, never counted in a quorum, never sent traffic) and logged once
with one line saying why, on both sides: the joining node refuses the members it
hears of, and the members refuse it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from caxton.cluster import wire

__all__ = ["WireAdmission", "compatible", "wire_range"]

log = logging.getLogger("caxton.cluster")


def wire_range(meta: Mapping[str, Any]) -> tuple[int, int]:
    """``(oldest, newest)`` wire versions a member announcing ``meta`` speaks."""
    newest = meta.get("wire")
    if not isinstance(newest, int) or newest < wire.FIRST_VERSION:
        return (wire.FIRST_VERSION, wire.FIRST_VERSION)
    oldest = meta.get("wire_min")
    if not isinstance(oldest, int) or not wire.FIRST_VERSION <= oldest <= newest:
        oldest = newest  # a node that gossips no minimum promises only its own
    return (oldest, newest)


def compatible(mine: tuple[int, int], theirs: tuple[int, int]) -> bool:
    """Do two wire ranges share a version both nodes speak?"""
    return max(mine[0], theirs[0]) <= min(mine[1], theirs[1])


def _span(versions: tuple[int, int]) -> str:
    return str(versions[0]) if versions[0] == versions[1] else f"{versions[0]}-{versions[1]}"


class WireAdmission:
    """Refuse members whose wire protocol range does not overlap ``supported``.

    ``on_refused(node_id, line)`` is called once per member and range (the line is
    logged here too); :attr:`refused` keeps the last line per member.
    """

    def __init__(
        self,
        node_id: str,
        supported: tuple[int, int],
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.supported = supported
        self.on_refused = on_refused
        self.refused: dict[str, str] = {}
        self._told: set[tuple[str, tuple[int, int]]] = set()

    def __call__(self, node_id: str, meta: Mapping[str, Any]) -> str | None:
        theirs = wire_range(meta)
        if compatible(self.supported, theirs):
            self.refused.pop(node_id, None)
            return None
        release = meta.get("version") or "an unknown release"
        line = (
            f"node {self.node_id} refuses node {node_id} ({release}): it speaks cluster "
            f"wire protocol {_span(theirs)}, this node {_span(self.supported)}; a "
            f"cluster runs at most two adjacent wire versions at once: upgrade (or roll "
            f"back) the nodes one wire version at a time"
        )
        self.refused[node_id] = line
        if (node_id, theirs) not in self._told:
            self._told.add((node_id, theirs))
            log.error("%s", line)
            if self.on_refused is not None:
                self.on_refused(node_id, line)
        return line
