"""The faults of the campaign: a seeded plan, and the true topology each one imposes.

:func:`plan` draws the faults from a seed alone, so one seed always gives the same
faults, on the same nodes, held for the same times. :class:`Fault` says what a fault
does to the network and the processes; :meth:`Fault.quorum` says which nodes can then
really reach a majority (a round trip with enough members, counting itself), which is
what the checker compares the nodes' own reported modes and accepted writes with. The
shapes come from :mod:`cluster_support` (the network side of the lab), so the model and
the nftables rules cannot disagree.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cluster_support import Link, bridge_links, ring_links, split_links

#: Every kind of fault, in the order :func:`plan` draws them from.
KINDS = (
    "split",  # a clean partition: a majority and a minority
    "isolate",  # one node cut off in both directions
    "one-way-out",  # one node can receive but not send
    "one-way-in",  # one node can send but not receive
    "bridge",  # two pairs cut apart, a fifth node reaching both
    "ring",  # each node reaches its two neighbours: a different majority each
    "kill",  # SIGKILL, restarted with its data when healed
    "pause",  # SIGSTOP, SIGCONT when healed
    "loss",  # one or two nodes lose a share of what they send
)


@dataclass(frozen=True)
class Fault:
    """One fault: what it cuts or stops, for how long, and how long to wait after."""

    index: int
    kind: str
    nodes: tuple[str, ...]  # the nodes it acts on (for split: the minority side)
    hold: float  # seconds between injection and heal
    settle: float  # seconds after the heal before the next fault
    links: frozenset[Link] = frozenset()  # directed links dropped on the bridge
    loss_percent: int = 0
    detail: str = ""

    @property
    def down(self) -> frozenset[str]:
        """Nodes whose process is killed or paused for the fault's duration."""
        return frozenset(self.nodes) if self.kind in ("kill", "pause") else frozenset()

    def reaches(self, a: str, b: str) -> bool:
        """Does ``a`` have a round trip with ``b`` during the fault?"""
        if a == b:
            return a not in self.down
        if a in self.down or b in self.down:
            return False
        return (a, b) not in self.links and (b, a) not in self.links

    def quorum(self, everyone: Sequence[str]) -> frozenset[str]:
        """The nodes that reach a majority of ``everyone`` (themselves included)."""
        needed = len(everyone) // 2 + 1
        return frozenset(a for a in everyone if sum(self.reaches(a, b) for b in everyone) >= needed)

    def clear_majority(self, everyone: Sequence[str]) -> frozenset[str] | None:
        """The nodes of the one majority that every node agrees on, when there is one:
        a set of at least a majority, all reaching each other, and the others reaching
        no majority. None for the shapes where majorities overlap (ring, bridge)."""
        with_quorum = self.quorum(everyone)
        needed = len(everyone) // 2 + 1
        if len(with_quorum) < needed:
            return None
        if all(self.reaches(a, b) for a in with_quorum for b in with_quorum):
            return with_quorum
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["links"] = sorted(list(link) for link in self.links)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        values = dict(data)
        values["nodes"] = tuple(values["nodes"])
        values["links"] = frozenset(tuple(link) for link in values["links"])
        return cls(**values)


@dataclass(frozen=True)
class Timing:
    """How long faults are held and how long the cluster gets between them (seconds)."""

    hold: tuple[float, float] = (3.0, 12.0)
    settle: tuple[float, float] = (2.0, 4.0)
    loss_percent: tuple[int, int] = (10, 40)
    kinds: tuple[str, ...] = field(default=KINDS)


def plan(seed: int, count: int, nodes: Sequence[str], timing: Timing | None = None) -> list[Fault]:
    """``count`` faults drawn from ``seed`` alone; every kind at least once when
    ``count`` allows (the first ``len(kinds)`` faults are the kinds in a shuffled order)."""
    timing = timing or Timing()
    rng = random.Random(seed)
    kinds = list(timing.kinds)
    rng.shuffle(kinds)
    faults = []
    for index in range(count):
        kind = kinds[index] if index < len(kinds) else rng.choice(timing.kinds)
        hold = round(rng.uniform(*timing.hold), 2)
        settle = round(rng.uniform(*timing.settle), 2)
        faults.append(_draw(rng, index, kind, list(nodes), hold, settle, timing))
    return faults


def _draw(
    rng: random.Random,
    index: int,
    kind: str,
    nodes: list[str],
    hold: float,
    settle: float,
    timing: Timing,
) -> Fault:
    shuffled = rng.sample(nodes, len(nodes))
    minority = len(nodes) // 2
    one = shuffled[0]
    others = [n for n in nodes if n != one]
    links: set[Link] = set()
    chosen: tuple[str, ...] = (one,)
    loss = 0
    detail = ""
    if kind == "split":
        chosen = tuple(sorted(shuffled[: rng.randint(1, minority)]))
        rest = [n for n in nodes if n not in chosen]
        links = split_links([list(chosen), rest])
        detail = f"{sorted(chosen)} | {sorted(rest)}"
    elif kind == "isolate":
        links = split_links([[one], others])
        detail = f"{one} cut off"
    elif kind == "one-way-out":
        links = {(one, other) for other in others}
        detail = f"{one} receives but cannot send"
    elif kind == "one-way-in":
        links = {(other, one) for other in others}
        detail = f"{one} sends but cannot receive"
    elif kind == "bridge":
        middle, left, right = shuffled[0], shuffled[1:3], shuffled[3:]
        links = bridge_links(left, middle, right)
        chosen = (middle,)
        detail = f"{sorted(left)} - {middle} - {sorted(right)}"
    elif kind == "ring":
        chosen = tuple(shuffled)
        links = ring_links(shuffled)
        detail = "ring " + " - ".join(shuffled)
    elif kind in ("kill", "pause"):
        detail = f"{'SIGKILL' if kind == 'kill' else 'SIGSTOP'} {one}"
    elif kind == "loss":
        chosen = tuple(sorted(shuffled[: rng.randint(1, 2)]))
        loss = rng.randint(*timing.loss_percent)
        detail = f"{sorted(chosen)} drop {loss}% of what they send"
    else:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
    return Fault(index, kind, chosen, hold, settle, frozenset(links), loss, detail)
