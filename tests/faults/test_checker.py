"""The checker and the fault plan on small hand-made histories: each property finds the
anomaly it is for and nothing in a clean history (no namespaces, no root needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from checker import check, failover_times
from history import Delivery, FinalState, History, Injected, Operation, Sample
from nemesis import KINDS, Fault, plan

NODES = ["n1", "n2", "n3", "n4", "n5"]
T0 = 1_000.0


def fault(kind: str, nodes: tuple[str, ...], links: Iterable[tuple[str, str]] = ()) -> Fault:
    return Fault(0, kind, nodes, hold=8.0, settle=2.0, links=frozenset(links), detail=kind)


def isolate(node: str) -> Fault:
    others = [n for n in NODES if n != node]
    return fault("isolate", (node,), {(node, o) for o in others} | {(o, node) for o in others})


def make_history(
    operations: Sequence[Operation] = (),
    *,
    faults: Sequence[Injected] = (),
    samples: Sequence[Sample] = (),
    deliveries: Sequence[Delivery] = (),
    ledger_ids: dict[str, list[str]] | None = None,
    dead_letters: dict[str, str] | None = None,
) -> History:
    history = History(
        seed=1,
        transport="tcp",
        nodes=NODES,
        settings={"detection_timeout": 2.0, "drift_margin": 0.5},
        operations=list(operations),
        samples=list(samples),
        faults=list(faults),
        started=T0,
        finished=T0 + 60,
    )
    history.final = FinalState(
        hosts={"ledger-n1": ["n1"]},
        ledger_ids=ledger_ids or {},
        dead_letters=dead_letters or {},
        pending=[],
        deliveries=list(deliveries),
    )
    return history


def op(kind: str, op_id: str, at: float, value: object = None, node: str = "n2") -> Operation:
    agent = "counter-n1" if kind == "count" else "ledger-n1"
    return Operation(kind, node, agent, op_id, T0 + at, T0 + at + 0.01, "ok", 200, value)


def anomalies(history: History, name: str) -> int:
    result: int = check(history)["properties"][name]["anomalies"]
    return result


def test_a_clean_history_has_no_anomaly() -> None:
    history = make_history(
        [op("send", "s-1", 1), op("record", "r-1", 2, "aa"), op("count", "c-1", 3, 1),
         op("count", "c-2", 4, 2)],
        deliveries=[Delivery("s-1", "n1", T0 + 1.1, "aa"), Delivery("r-1", "n1", T0 + 2, "aa")],
        ledger_ids={"ledger-n1": ["s-1", "r-1"]},
    )  # fmt: skip
    report = check(history)
    assert all(p["holds"] for p in report["properties"].values()), report


def test_an_acknowledged_message_neither_delivered_nor_dead_lettered_is_lost() -> None:
    sends = [op("send", "s-1", 1), op("send", "s-2", 2), op("send", "s-3", 3)]
    history = make_history(
        sends,
        deliveries=[Delivery("s-1", "n1", T0 + 1.1, "aa")],
        dead_letters={"s-2": "expired: ..."},
    )
    report = check(history)["properties"]["lost-messages"]
    assert report["anomalies"] == 1
    assert report["examples"][0]["what"].startswith("s-3 to ledger-n1 accepted by n2 (202)")
    assert report["measured"] == {"acknowledged": 3, "dead_lettered": 1}


def test_a_second_delivery_is_a_duplicate_unless_its_node_crashed_in_between() -> None:
    twice = [Delivery("s-1", "n1", T0 + 1, "aa"), Delivery("s-1", "n1", T0 + 5, "aa")]
    assert anomalies(make_history(deliveries=twice), "duplicates") == 1
    killed = Injected(fault("kill", ("n1",)), T0 + 2, T0 + 4)
    assert anomalies(make_history(deliveries=twice, faults=[killed]), "duplicates") == 0
    entry_killed = Injected(fault("kill", ("n2",)), T0 + 2, T0 + 4)  # s-1 came in on n2
    sent = [op("send", "s-1", 0.5)]
    assert anomalies(make_history(sent, deliveries=twice, faults=[entry_killed]), "duplicates") == 0
    other_killed = Injected(fault("kill", ("n3",)), T0 + 2, T0 + 4)
    assert anomalies(make_history(sent, deliveries=twice, faults=[other_killed]), "duplicates") == 1
    # Another copy (a failover's) taking a resend is documented: counted, not an anomaly.
    moved = [twice[0], Delivery("s-1", "n3", T0 + 5, "bb")]
    report = check(make_history(sent, deliveries=moved))["properties"]["duplicates"]
    assert (report["anomalies"], report["measured"]) == (0, {"redelivered_to_another_copy": 1})


def test_an_acknowledged_ledger_id_missing_from_the_final_state_is_lost_state() -> None:
    records = [op("record", "r-1", 1, "aa"), op("record", "r-2", 2, "aa")]
    history = make_history(records, ledger_ids={"ledger-n1": ["r-1"]})
    assert anomalies(history, "lost-state") == 1
    failed = [*records[:1], Operation("record", "n2", "ledger-n1", "r-3", T0, T0 + 2, "info")]
    assert anomalies(make_history(failed, ledger_ids={"ledger-n1": ["r-1"]}), "lost-state") == 0


def test_one_count_twice_or_two_ledger_copies_acknowledging_at_once_are_two_copies() -> None:
    counts = [op("count", "c-1", 1, 7), op("count", "c-2", 2, 7, node="n3")]
    assert anomalies(make_history(counts), "two-copies") == 1
    interleaved = [op("record", "r-1", 1, "aa"), op("record", "r-2", 2, "bb"),
                   op("record", "r-3", 3, "aa")]  # fmt: skip
    assert anomalies(make_history(interleaved), "two-copies") == 1
    one_after_the_other = [op("record", "r-1", 1, "aa"), op("record", "r-2", 2, "bb")]
    assert anomalies(make_history(one_after_the_other), "two-copies") == 0


def test_read_write_without_a_quorum_past_the_detection_timeout_is_a_minority_write() -> None:
    cut = Injected(isolate("n3"), T0 + 10, T0 + 20)
    samples = [Sample("n3", T0 + 12.5, "read-write"), Sample("n1", T0 + 15, "read-write")]
    assert anomalies(make_history(faults=[cut], samples=samples), "minority-writes") == 0
    late = [*samples, Sample("n3", T0 + 16, "read-write"), Sample("n3", T0 + 17, "read-write")]
    report = check(make_history(faults=[cut], samples=late))["properties"]["minority-writes"]
    assert report["anomalies"] == 1  # one per node and fault, with the longest time
    assert report["examples"][0]["what"].startswith("n3 still read-write without a quorum 7.0 s")
    deploy = Operation("deploy", "n3", "probe-0-n3", "probe-0-n3", T0 + 14, T0 + 14.1, "ok", 201)
    assert anomalies(make_history([deploy], faults=[cut]), "minority-writes") == 1
    # The mode counts from when its answer came, not from when the agent list after it did.
    slow_list = [Sample("n3", T0 + 16, "read-write", mode_at=T0 + 12.5)]
    assert anomalies(make_history(faults=[cut], samples=slow_list), "minority-writes") == 0


def test_failover_is_measured_from_the_cut_to_the_first_answer_through_the_majority() -> None:
    cut = Injected(isolate("n1"), T0 + 10, T0 + 20)
    before = [Sample("n1", T0 + 9.5, "read-write", ["ledger-n1"])]
    via_minority = op("record", "r-1", 11, "aa", node="n1")
    quick = op("record", "r-2", 13, "bb")
    history = make_history([via_minority, quick], faults=[cut], samples=before)
    assert [(a, round(t or 0, 2)) for _, a, t in failover_times(history)] == [("ledger-n1", 3.01)]
    assert anomalies(history, "failover-liveness") == 0
    slow = op("record", "r-3", 16, "bb")
    assert anomalies(make_history([slow], faults=[cut], samples=before), "failover-liveness") == 1
    never = make_history([via_minority], faults=[cut], samples=before)
    assert anomalies(never, "failover-liveness") == 1


def split(*small: str) -> Fault:
    rest = [n for n in NODES if n not in small]
    return fault(
        "split",
        small,
        {(a, b) for a in small for b in rest} | {(b, a) for a in small for b in rest},
    )


def test_a_failover_without_a_majority_of_the_replica_set_is_counted_apart() -> None:
    """n1 owns ledger-n1 with holders n2 and n3. Split {n1, n2} | {n3, n4, n5}: the big
    side is a majority of the cluster but holds 1 of the 3 members, so no takeover is
    safe (design 0001): the checker does not hold it to the bound, and counts it."""
    cut = Injected(split("n1", "n2"), T0 + 10, T0 + 20)
    before = [Sample("n1", T0 + 9.5, "read-write", ["ledger-n1"], {"ledger-n1": ["n2", "n3"]})]
    history = make_history([op("record", "r-1", 11, "aa", node="n1")], faults=[cut], samples=before)
    report = check(history)["properties"]["failover-liveness"]
    assert report["holds"], report
    assert (report["measured"]["failovers"], report["measured"]["impossible"]) == (0, 1)
    assert report["measured"]["impossible_examples"] == [
        "ledger-n1: 1 of its replica set (n1, n2, n3) on the majority side, 2 needed "
        "[#0 split (split)]"
    ]
    assert failover_times(history) == []


def test_a_failover_with_a_majority_of_the_replica_set_is_held_to_the_bound() -> None:
    """The same split with the holders n3 and n4 on the big side: a takeover is possible,
    so never answering during the 10 s hold is an anomaly, and answering in time is not."""
    cut = Injected(split("n1", "n2"), T0 + 10, T0 + 20)
    before = [Sample("n1", T0 + 9.5, "read-write", ["ledger-n1"], {"ledger-n1": ["n3", "n4"]})]
    never = make_history([op("record", "r-1", 11, "aa", node="n1")], faults=[cut], samples=before)
    report = check(never)["properties"]["failover-liveness"]
    assert report["anomalies"] == 1
    assert (report["measured"]["failovers"], report["measured"]["impossible"]) == (1, 0)
    assert report["examples"][0]["what"] == (
        "ledger-n1 never answered during the hold of 10.0 s (bound 4.5 s)"
    )
    in_time = make_history([op("record", "r-2", 13, "bb", node="n4")], faults=[cut], samples=before)
    assert anomalies(in_time, "failover-liveness") == 0


def test_the_quorum_model_of_each_shape() -> None:
    ring = plan(3, 20, NODES)
    by_kind = {f.kind: f for f in ring}
    assert set(by_kind) == set(KINDS)
    assert by_kind["ring"].quorum(NODES) == set(NODES)  # each sees its own majority
    assert by_kind["ring"].clear_majority(NODES) is None
    assert by_kind["bridge"].quorum(NODES) == set(NODES)
    assert by_kind["bridge"].clear_majority(NODES) is None
    for kind in ("isolate", "one-way-in", "one-way-out", "kill", "pause"):
        one = by_kind[kind].nodes[0]
        assert by_kind[kind].quorum(NODES) == set(NODES) - {one}, kind
        assert by_kind[kind].clear_majority(NODES) == frozenset(NODES) - {one}, kind
    split = by_kind["split"]
    assert split.quorum(NODES) == set(NODES) - set(split.nodes)
    assert by_kind["loss"].quorum(NODES) == set(NODES)


def test_a_warm_up_asked_again_is_not_one_message_delivered_twice() -> None:
    """The campaign asks every agent through every node before the faults, and asks
    them all again when one fails: each pass has its own ids, so a ledger that answered
    both passes logs two ids, not one id twice (a same-copy duplicate to the checker)."""
    from campaign import warmup_requests

    first = warmup_requests(NODES, ["ledger-n1", "counter-n1"], 1)
    again = warmup_requests(NODES, ["ledger-n1", "counter-n1"], 2)
    assert len({i for _, _, i in first}) == len(first) == 10
    assert not {i for _, _, i in first} & {i for _, _, i in again}
    twice = [Delivery(first[0][2], "n1", T0 - 19, "aa"), Delivery(again[0][2], "n1", T0, "aa")]
    assert anomalies(make_history(deliveries=twice), "duplicates") == 0


@pytest.mark.parametrize("seed", [1, 42])
def test_a_seed_gives_the_same_plan(seed: int) -> None:
    assert plan(seed, 30, NODES) == plan(seed, 30, NODES)
    assert plan(seed, 30, NODES) != plan(seed + 1, 30, NODES)


def test_a_history_survives_its_json(tmp_path: Path) -> None:
    cut = Injected(isolate("n3"), T0 + 10, T0 + 20)
    history = make_history(
        [op("send", "s-1", 1)], faults=[cut], deliveries=[Delivery("s-1", "n1", T0, "aa")]
    )
    history.save(tmp_path / "history.json")
    assert History.load(tmp_path / "history.json") == history
