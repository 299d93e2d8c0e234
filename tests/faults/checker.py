"""The checker: reads a campaign's history and final state, and says, per property,
whether the cluster kept its promises (see docs/reliability.md).

Each property is one function from the :class:`~history.History` to a list of
:class:`Anomaly`; :func:`check` runs them all and adds what was measured. Only
acknowledged (``ok``) operations are held against the cluster; ``info`` ones (timeouts,
cut connections) may or may not have happened, and ``fail`` ones did not.

    python tests/faults/checker.py HISTORY.json [--json]

checks a saved history again (exit status 1 when a property has an anomaly).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))

from history import Delivery, History, Injected, Operation, Sample

#: Seconds a node's reported mode may lag the true topology beyond the detection
#: timeout: the 100 ms sampling period plus the time an event takes to be handled.
MODE_GRACE = 1.0
#: How many anomalies of each property the report lists in full.
EXAMPLES = 10


@dataclass
class Anomaly:
    property: str
    what: str
    at: float = 0.0  # seconds since the campaign started
    node: str = ""
    agent: str = ""
    fault: str = ""  # "#index kind (detail)" of the fault in force, if any


@dataclass(frozen=True)
class Property:
    name: str
    title: str
    check: Callable[[History], list[Anomaly]]


def _fault_label(item: Injected | None) -> str:
    if item is None:
        return ""
    return f"#{item.fault.index} {item.fault.kind} ({item.fault.detail})"


def _fault_at(history: History, at: float, after: float = 0.0) -> Injected | None:
    """The fault in force at ``at`` (or healed less than ``after`` seconds before)."""
    for item in history.faults:
        if item.start <= at <= item.end + after:
            return item
    return None


def _against(
    name: str, op: Operation, what: str, history: History, at: float, fault: Injected | None
) -> Anomaly:
    """An anomaly of property ``name`` about the operation ``op``, seen at ``at``."""
    return Anomaly(name, what, at - history.started, op.node, op.agent, _fault_label(fault))


def _acked(history: History, *kinds: str) -> Iterable[Operation]:
    return (op for op in history.operations if op.outcome == "ok" and op.kind in kinds)


def _final(history: History) -> Any:
    if history.final is None:
        raise ValueError("the history has no final state: the campaign did not finish")
    return history.final


# -------------------------------------------------------------------------
# The properties
# -------------------------------------------------------------------------


def lost_messages(history: History) -> list[Anomaly]:
    """An at-least-once message answered 202 was neither delivered nor dead-lettered."""
    final = _final(history)
    delivered = {d.op_id for d in final.deliveries}
    delivered.update(i for ids in final.ledger_ids.values() for i in ids)
    pending = set(final.pending)
    anomalies = []
    for op in _acked(history, "send"):
        if op.op_id in delivered or op.op_id in final.dead_letters:
            continue
        where = "still pending at the end" if op.op_id in pending else "gone"
        what = (
            f"{op.op_id} to {op.agent} accepted by {op.node} (202), never delivered nor "
            f"dead-lettered ({where})"
        )
        fault = _fault_at(history, op.complete, after=2.0)
        anomalies.append(_against("lost-messages", op, what, history, op.complete, fault))
    return anomalies


def duplicates(history: History) -> list[Anomaly]:
    """A message delivered twice beyond the documented at-least-once window
    (docs/messaging.md, "Delivery guarantees"), which allows:

    - a crash between the delivery and its acknowledgement: of the node that delivered it,
      after the delivery, or of the node whose API took it, after it was sent (its outbox
      replays what it had not seen acknowledged);
    - a resend that reaches *another copy* of the agent (the dedup window is per node):
      the first copy's node took it and could not answer, and with quorum durability that
      copy cannot commit what it did. These are counted by :func:`redeliveries`.
    """
    kills = [(i.fault.nodes[0], i.start) for i in history.faults if i.fault.kind == "kill"]
    agent_of = {op.op_id: op.agent for op in history.operations}
    entry_of = {op.op_id: (op.node, op.invoke) for op in history.operations}
    anomalies = []
    for op_id, first, again in _repeated(history):
        if first.copy != again.copy:
            continue
        entry, sent = entry_of.get(op_id, ("", first.at))
        crashed = any(
            (node == first.node and first.at <= t <= again.at)
            or (node == entry and sent <= t <= again.at)
            for node, t in kills
        )
        if crashed:
            continue
        anomalies.append(
            Anomaly(
                "duplicates",
                f"{op_id} delivered twice to copy {first.copy} on {first.node}, "
                f"{again.at - first.at:.2f} s apart, without a crash in between",
                again.at - history.started,
                again.node,
                agent_of.get(op_id, ""),
                _fault_label(_fault_at(history, again.at, after=5.0)),
            )
        )
    return anomalies


def redeliveries(history: History) -> int:
    """Messages delivered again to another copy of their agent (documented, see
    :func:`duplicates`): the agent's code ran twice, its committed state saw it once."""
    return sum(1 for _, first, again in _repeated(history) if first.copy != again.copy)


def _repeated(history: History) -> Iterable[tuple[str, Delivery, Delivery]]:
    """(id, first delivery, a later one) for every id delivered more than once."""
    by_id: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in _final(history).deliveries:
        by_id[delivery.op_id].append(delivery)
    for op_id, seen in by_id.items():
        seen.sort(key=lambda d: d.at)
        for again in seen[1:]:
            yield op_id, seen[0], again


def lost_state(history: History) -> list[Anomaly]:
    """An id the ledger acknowledged is missing from the ledger's final state."""
    final = _final(history)
    state = {agent: set(ids) for agent, ids in final.ledger_ids.items()}
    anomalies = []
    for op in _acked(history, "record"):
        if op.op_id in state.get(op.agent, set()):
            continue
        what = (
            f"{op.op_id} acknowledged by {op.agent} (copy {op.value}) through {op.node}, "
            f"missing from its final state (hosts at the end: "
            f"{final.hosts.get(op.agent) or 'none'})"
        )
        fault = _fault_at(history, op.complete, after=5.0)
        anomalies.append(_against("lost-state", op, what, history, op.complete, fault))
    return anomalies


def two_copies(history: History) -> list[Anomaly]:
    """Two acknowledged results from two copies of one agent: a counter value returned
    to two requests, or two ledger copies acknowledging in overlapping periods."""
    anomalies = []
    values: dict[tuple[str, Any], list[Operation]] = defaultdict(list)
    for op in _acked(history, "count"):
        values[(op.agent, op.value)].append(op)
    for (agent, value), ops in sorted(values.items(), key=lambda kv: kv[1][0].complete):
        if len(ops) < 2:
            continue
        ops.sort(key=lambda op: op.complete)
        what = (
            f"{agent} returned count {value} to {len(ops)} acknowledged requests "
            f"({', '.join(f'{op.op_id} via {op.node}' for op in ops[:3])})"
        )
        second = ops[1]
        fault = _fault_at(history, second.complete, after=5.0)
        anomalies.append(_against("two-copies", second, what, history, second.complete, fault))
    # In real time: once a newer copy has acknowledged one request, the older copy must
    # not acknowledge a request sent after that (its answer could not be in flight).
    copies: dict[str, dict[str, list[Operation]]] = defaultdict(lambda: defaultdict(list))
    for op in _acked(history, "record"):
        copies[op.agent][str(op.value)].append(op)
    for agent, by_copy in copies.items():
        spans = sorted(
            (min(op.complete for op in ops), max(op.invoke for op in ops), copy, len(ops))
            for copy, ops in by_copy.items()
        )
        for older, newer in pairwise(spans):
            (_, last_sent, old_copy, _), (first_acked, _, new_copy, count) = older, newer
            if last_sent <= first_acked:
                continue
            fault = _fault_at(history, first_acked, after=5.0)
            anomalies.append(
                Anomaly(
                    "two-copies",
                    f"{agent}: copy {old_copy} still acknowledged a request sent "
                    f"{last_sent - first_acked:.2f} s after copy {new_copy} first acknowledged "
                    f"one ({count} acks by {new_copy})",
                    first_acked - history.started,
                    agent=agent,
                    fault=_fault_label(fault),
                )
            )
    return anomalies


def minority_writes(history: History) -> list[Anomaly]:
    """A node without a quorum (by the topology the campaign imposed) reported read-write
    longer than the detection timeout after losing it, or accepted a deploy."""
    detection = float(history.settings["detection_timeout"])
    everyone = history.nodes
    anomalies = []
    worst: dict[tuple[int, str], tuple[float, float]] = {}
    for sample in history.samples:
        if sample.mode != "read-write":
            continue
        item = _fault_at(history, sample.said_mode_at)
        if item is None or sample.node in item.fault.quorum(everyone):
            continue
        late = sample.said_mode_at - item.start - detection
        if late <= MODE_GRACE:
            continue
        key = (item.fault.index, sample.node)
        first, _ = worst.get(key, (sample.said_mode_at, 0.0))
        worst[key] = (first, max(late, worst.get(key, (0.0, 0.0))[1]))
    for (index, node), (first, late) in sorted(worst.items()):
        item = history.faults[index]
        anomalies.append(
            Anomaly(
                "minority-writes",
                f"{node} still read-write without a quorum {late + detection:.1f} s after the cut "
                f"(detection timeout {detection:g} s)",
                first - history.started,
                node,
                fault=_fault_label(item),
            )
        )
    for op in _acked(history, "deploy"):
        item = _fault_at(history, op.invoke)
        if item is None or op.node in item.fault.quorum(everyone):
            continue
        what = (
            f"{op.node} accepted the deploy of {op.agent} without a quorum "
            f"{op.invoke - item.start:.1f} s after the cut"
        )
        anomalies.append(_against("minority-writes", op, what, history, op.invoke, item))
    return anomalies


@dataclass(frozen=True)
class Failover:
    """An agent whose every host a fault with a clear majority cut off, held long enough
    to tell. ``took``: seconds from the cut until a request through the majority was
    answered again (None: none was during the hold). ``replica_set``: its owner and
    holders just before the cut (empty when the history did not record holders).
    ``possible``: whether a safe takeover could happen at all (see :func:`possible`)."""

    item: Injected
    agent: str
    took: float | None
    majority: frozenset[str]
    replica_set: frozenset[str]
    possible: bool

    def why_impossible(self) -> str:
        members = ", ".join(sorted(self.replica_set))
        on_majority = len(self.replica_set & self.majority)
        return (
            f"{self.agent}: {on_majority} of its replica set ({members}) on the majority "
            f"side, {len(self.replica_set) // 2 + 1} needed [{_fault_label(self.item)}]"
        )


def possible(majority: frozenset[str], replica_set: frozenset[str]) -> bool:
    """Can the nodes of ``majority`` (a majority of the cluster, all reaching each other)
    take over an agent whose replica set is ``replica_set``? Only with a majority of that
    set among them: a takeover is a promise round that needs one (design 0001), as a Raft
    leader needs a quorum of the log's replicas and Akka's split brain resolver stops the
    side without one. An unknown set (an older history) is held to the bound."""
    if not replica_set:
        return True
    return len(replica_set & majority) >= len(replica_set) // 2 + 1


def failovers(history: History) -> list[Failover]:
    """Every failover a fault with a clear majority called for (see :class:`Failover`)."""
    bound = failover_bound(history)
    everyone = history.nodes
    requested = {op.agent for op in history.operations if op.kind in ("count", "record")}
    measured = []
    for item in history.faults:
        majority = item.fault.clear_majority(everyone)
        if majority is None or majority == frozenset(everyone):
            continue
        if item.end - item.start < bound + 1.0:
            continue
        for agent, (hosts, replica_set) in placement_before(history, item.start).items():
            if agent not in requested or hosts & majority:
                continue
            answered = [
                op.complete
                for op in _acked(history, "count", "record")
                if op.agent == agent
                and op.node in majority
                and op.invoke >= item.start
                and op.complete <= item.end
            ]
            took = min(answered) - item.start if answered else None
            measured.append(
                Failover(item, agent, took, majority, replica_set, possible(majority, replica_set))
            )
    return measured


def failover_times(history: History) -> list[tuple[Injected, str, float | None]]:
    """(fault, agent, seconds until answered through the majority) of every failover
    that was possible: the ones :func:`failover_liveness` holds to the bound."""
    return [(f.item, f.agent, f.took) for f in failovers(history) if f.possible]


def failover_bound(history: History) -> float:
    settings = history.settings
    return float(settings["detection_timeout"]) + float(settings["drift_margin"]) + 2.0


def failover_liveness(history: History) -> list[Anomaly]:
    """While a majority exists that also holds a majority of an agent's replica set,
    every agent cut off with its node is answered again through that majority within
    detection timeout + drift margin + 2 s. The failovers no majority could make safely
    are not held to it; :func:`check` counts them apart."""
    bound = failover_bound(history)
    anomalies = []
    for item, agent, took in failover_times(history):
        if took is not None and took <= bound:
            continue
        what = "never answered during the hold" if took is None else f"answered after {took:.1f} s"
        anomalies.append(
            Anomaly(
                "failover-liveness",
                f"{agent} {what} of {item.end - item.start:.1f} s (bound {bound:.1f} s)",
                item.start - history.started,
                agent=agent,
                fault=_fault_label(item),
            )
        )
    return anomalies


def placement_before(
    history: History, at: float, window: float = 2.0
) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Agent name -> (nodes that ran it, its replica set: those nodes and the holders
    they named) in each node's last answered sample before ``at``. The replica set is
    empty when no host's sample named its holders (histories recorded before that)."""
    last: dict[str, Sample] = {}
    for sample in history.samples:
        recent = at - window <= sample.at < at and sample.mode
        if recent and (sample.node not in last or sample.at >= last[sample.node].at):
            last[sample.node] = sample
    hosts: dict[str, set[str]] = defaultdict(set)
    members: dict[str, set[str]] = defaultdict(set)
    for node, sample in last.items():
        for agent in sample.agents:
            hosts[agent].add(node)
            if agent in sample.holders:
                members[agent].update([node, *sample.holders[agent]])
    return {agent: (frozenset(on), frozenset(members[agent])) for agent, on in hosts.items()}


PROPERTIES = (
    Property("lost-messages", "acknowledged messages lost", lost_messages),
    Property("duplicates", "duplicates beyond the documented window", duplicates),
    Property("lost-state", "acknowledged state changes missing from the final state", lost_state),
    Property("two-copies", "acknowledged results from two copies of one agent", two_copies),
    Property("minority-writes", "writes accepted by a node without a quorum", minority_writes),
    Property("failover-liveness", "failover within detection + drift + 2 s", failover_liveness),
)
NAMES = tuple(p.name for p in PROPERTIES)


# -------------------------------------------------------------------------
# The report
# -------------------------------------------------------------------------


def check(history: History) -> dict[str, Any]:
    """Every property's anomalies (the first :data:`EXAMPLES` in full) and the figures."""
    outcomes = Counter(f"{op.kind}:{op.outcome}" for op in history.operations)
    final = _final(history)
    properties: dict[str, Any] = {}
    for prop in PROPERTIES:
        found = prop.check(history)
        properties[prop.name] = {
            "title": prop.title,
            "anomalies": len(found),
            "holds": not found,
            "by_fault": dict(Counter(a.fault.split(" ")[1] if a.fault else "none" for a in found)),
            "examples": [asdict(a) for a in found[:EXAMPLES]],
        }
    called_for = failovers(history)
    times = [f.took for f in called_for if f.possible and f.took is not None]
    impossible = [f for f in called_for if not f.possible]
    properties["failover-liveness"]["measured"] = {
        "failovers": len(called_for) - len(impossible),
        "bound_s": failover_bound(history),
        "p50_s": round(statistics.median(times), 2) if times else None,
        "max_s": round(max(times), 2) if times else None,
        # Not held to the bound, never hidden: how many, and which.
        "impossible": len(impossible),
        "impossible_examples": [f.why_impossible() for f in impossible[:EXAMPLES]],
    }
    properties["duplicates"]["measured"] = {"redelivered_to_another_copy": redeliveries(history)}
    acked_sends = {op.op_id for op in _acked(history, "send")}
    properties["lost-messages"]["measured"] = {
        "acknowledged": len(acked_sends),
        "dead_lettered": len(acked_sends & final.dead_letters.keys()),
    }
    return {
        "seed": history.seed,
        "transport": history.transport,
        "faults": len(history.faults),
        "fault_kinds": dict(Counter(i.fault.kind for i in history.faults)),
        "duration_s": round(history.finished - history.started, 1),
        "operations": dict(sorted(outcomes.items())),
        "settings": history.settings,
        "properties": properties,
    }


def summary(report: dict[str, Any]) -> str:
    """The report as a few lines for a terminal or a test's output."""
    lines = [
        f"fault campaign: seed {report['seed']}, {report['transport']}, {report['faults']} "
        f"faults, {report['duration_s']} s; operations {report['operations']}"
    ]
    for name, result in report["properties"].items():
        verdict = "holds" if result["holds"] else f"{result['anomalies']} anomalies"
        extra = f" by fault {result['by_fault']}" if result["by_fault"] else ""
        measured = dict(result.get("measured", {}))
        impossible = measured.pop("impossible_examples", [])
        extra += f" {measured}" if measured else ""
        lines.append(f"  {name:<18} {verdict}{extra}")
        for example in result["examples"][:3]:
            where = f" [{example['fault']}]" if example["fault"] else ""
            lines.append(f"      t={example['at']:.1f}s {example['what']}{where}")
        lines += [f"      not possible: {text}" for text in impossible[:3]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: checker.py HISTORY.json [--json]", file=sys.stderr)
        return 2
    report = check(History.load(Path(argv[0])))
    print(json.dumps(report, indent=2) if "--json" in argv else summary(report))
    return 0 if all(p["holds"] for p in report["properties"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
