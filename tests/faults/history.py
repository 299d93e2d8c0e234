"""What a campaign records, and the JSON it is kept in.

Like a Jepsen history, every client operation is one record with its invocation and
completion times and an outcome: ``ok`` (acknowledged: the node answered 200/201/202),
``fail`` (certainly not done: 4xx, 503, connection refused) or ``info`` (unknown: a
timeout, 504, a connection cut mid-request; it may or may not have happened). Only
``ok`` operations are promises the checker holds the cluster to. Times are wall-clock
seconds (``time.time()``) on the one machine that runs every node, so they compare with
the nodes' own log times.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from nemesis import Fault

Outcome = Literal["ok", "fail", "info"]


@dataclass
class Operation:
    """One client request through one node's REST API."""

    kind: str  # "count" (counter request), "record" (ledger request), "send", "deploy"
    node: str  # the node whose API took the request
    agent: str
    op_id: str  # the unique id the request carries (content id and message_id)
    invoke: float
    complete: float = 0.0
    outcome: Outcome = "info"
    status: int = 0  # HTTP status, 0 without an answer
    value: Any = None  # counter: the count; ledger: the copy token
    error: str = ""


@dataclass
class Sample:
    """One node's mode and local agents, as its API reported them at ``at``."""

    node: str
    at: float
    mode: str  # "read-write", "read-only", ... or "" when the node did not answer
    agents: list[str] = field(default_factory=list)
    # Running agent -> the other members of its replica set, as this node (its owner)
    # reported them; absent in histories recorded before the campaign sampled them.
    holders: dict[str, list[str]] = field(default_factory=dict)
    # When the mode's answer came, before the agent list was asked for (``at`` is when
    # that list came); absent in histories recorded before: ``at`` then.
    mode_at: float | None = None

    @property
    def said_mode_at(self) -> float:
        return self.at if self.mode_at is None else self.mode_at


@dataclass
class Injected:
    """A fault as it really ran: the plan plus the times it was in force."""

    fault: Fault
    start: float
    end: float


@dataclass
class Delivery:
    """The ledger agent logged ``op_id`` at ``at`` on ``node`` (copy ``copy``)."""

    op_id: str
    node: str
    at: float
    copy: str


@dataclass
class FinalState:
    """What the cluster holds once every fault is healed and the clients stopped."""

    hosts: dict[str, list[str]]  # agent name -> nodes running it
    ledger_ids: dict[str, list[str]]  # ledger agent -> ids in its final KV state
    dead_letters: dict[str, str]  # message id -> reason, over every node's store
    pending: list[str]  # ids still in an outbox or queue, unacknowledged, at the end
    deliveries: list[Delivery]


@dataclass
class History:
    seed: int
    transport: str
    nodes: list[str]
    settings: dict[str, Any]
    operations: list[Operation] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    faults: list[Injected] = field(default_factory=list)
    final: FinalState | None = None
    started: float = 0.0
    finished: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = [
            {"fault": item.fault.to_json(), "start": item.start, "end": item.end}
            for item in self.faults
        ]
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> History:
        data = json.loads(path.read_text())
        final = data.pop("final")
        history = cls(
            seed=data["seed"],
            transport=data["transport"],
            nodes=data["nodes"],
            settings=data["settings"],
            operations=[Operation(**op) for op in data["operations"]],
            samples=[Sample(**sample) for sample in data["samples"]],
            faults=[
                Injected(Fault.from_json(item["fault"]), item["start"], item["end"])
                for item in data["faults"]
            ],
            started=data["started"],
            finished=data["finished"],
        )
        if final is not None:
            deliveries = [Delivery(**d) for d in final.pop("deliveries")]
            history.final = FinalState(**final, deliveries=deliveries)
        return history
