"""The sans-IO SWIM core, message by message (no simulator, no sockets)."""

from __future__ import annotations

import math
import random

import pytest

from caxton.drivers.membership import MemberStatus
from caxton.membership import codec
from caxton.membership.broadcasts import BroadcastQueue, retransmit_limit
from caxton.membership.core import EventKind
from caxton.membership.settings import SwimSettings
from caxton.membership.swim_core import (
    Awareness,
    Suspicion,
    SwimCore,
    push_pull_scale,
    suspicion_bounds,
)
from caxton.testing.membership import SimCluster, formed_cluster

A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)
C = ("10.0.0.3", 7946)


def make(node_id: str, address: tuple[str, int], now: float = 0.0, **settings: object) -> SwimCore:
    return SwimCore(
        node_id,
        address,
        SwimSettings().with_changes(**settings),
        now=now,
        rng=random.Random(node_id),
    )


def datagram_from(sender: str, address: tuple[str, int], *messages: bytes) -> bytes:
    return codec.DatagramBuilder(sender, address).build(messages)


def messages_to(core: SwimCore, address: tuple[str, int]) -> list[list[object]]:
    """Decode every datagram the core queued for ``address``."""
    found: list[list[object]] = []
    for datagram in core.drain().datagrams:
        if datagram.address == address:
            found.extend(codec.decode_datagram(datagram.payload)[1])
    return found


def kinds(messages: list[list[object]]) -> list[codec.MsgType]:
    return [codec.MsgType(m[0]) for m in messages]  # type: ignore[arg-type]


def sync(a: SwimCore, b: SwimCore, now: float) -> None:
    """Run a complete push-pull from ``a`` to ``b``."""
    (token,) = a.join(now, [b.address])
    request = a.drain().syncs[0]
    reply = b.handle_sync(now, request.payload)
    assert a.sync_done(now, token, reply)


def joined_pair() -> tuple[SwimCore, SwimCore]:
    a, b = make("a", A), make("b", B)
    sync(b, a, 0.0)
    a.drain()
    b.drain()
    return a, b


def test_ping_is_answered_with_ack_to_the_advertised_address() -> None:
    a = make("a", A)
    a.handle_datagram(1.0, datagram_from("b", B, codec.ping(7, "a")), ("127.9.9.9", 1))
    assert kinds(messages_to(a, B))[:1] == [codec.MsgType.ACK]


def test_ping_for_another_node_id_is_ignored() -> None:
    a = make("a", A)
    a.drain()
    a.handle_datagram(1.0, datagram_from("b", B, codec.ping(7, "somebody-else")), B)
    assert a.drain().datagrams == []


def test_join_by_push_pull_merges_both_views() -> None:
    a, b = joined_pair()
    assert a.status_of("b") is MemberStatus.ALIVE
    assert b.status_of("a") is MemberStatus.ALIVE
    assert a.cluster_size() == b.cluster_size() == 2


def test_join_skips_our_own_address_but_keeps_it_as_seed() -> None:
    a = make("a", A)
    assert a.join(0.0, [A]) == []
    assert A in a.seeds


def test_failed_probe_leads_to_suspicion_then_failure() -> None:
    a, _b = joined_pair()
    c = make("c", C)
    sync(c, a, 0.0)
    a.drain()
    now = 0.0
    suspected_at = None
    while now < 60 and a.status_of("b") is not MemberStatus.FAILED:
        now = a.next_deadline()
        a.tick(now)
        events = a.drain().events
        if any(e.kind is EventKind.SUSPECT and e.member.node_id == "b" for e in events):
            suspected_at = now
    assert suspected_at is not None
    assert a.status_of("b") is MemberStatus.FAILED
    # Nobody confirmed, cluster of 3: k = 0, so the minimum timeout applies.
    minimum, _ = suspicion_bounds(a.settings, 3)
    assert now - suspected_at == pytest.approx(minimum, abs=0.3)


def test_indirect_probe_request_is_relayed_and_acked_back() -> None:
    _a, b = joined_pair()
    b.handle_datagram(1.0, datagram_from("a", A, codec.ping_req(42, "c", C, True)), A)
    (ping,) = [m for m in messages_to(b, C) if m[0] == codec.MsgType.PING]
    relay_seq = ping[1]
    b.handle_datagram(1.1, datagram_from("c", C, codec.ack(relay_seq, 3)), C)
    acks = [m for m in messages_to(b, A) if m[0] == codec.MsgType.ACK]
    assert acks == [[codec.MsgType.ACK, 42, 3]]


def test_indirect_probe_without_answer_sends_nack() -> None:
    _a, b = joined_pair()
    b.handle_datagram(1.0, datagram_from("a", A, codec.ping_req(42, "c", C, True)), A)
    b.drain()
    b.tick(1.0 + b.settings.probe_timeout)
    assert [codec.MsgType.NACK, 42] in messages_to(b, A)


def test_suspect_about_ourselves_is_refuted_with_a_higher_incarnation() -> None:
    a, _b = joined_pair()
    a.handle_datagram(2.0, datagram_from("b", B, codec.suspect(0, "a", "b")), B)
    assert a.incarnation == 1
    assert a.awareness.score == 1
    out = a.drain()
    sent = [m for d in out.datagrams for m in codec.decode_datagram(d.payload)[1]]
    a.tick(a.next_deadline())
    sent += [m for d in a.drain().datagrams for m in codec.decode_datagram(d.payload)[1]]
    assert any(m[0] == codec.MsgType.ALIVE and m[2] == "a" and m[1] == 1 for m in sent)


def test_stale_suspicion_is_answered_directly_to_the_accuser() -> None:
    a, _b = joined_pair()
    a.update_meta(1.0, {"agents": 3})  # incarnation 1
    a.drain()
    a.handle_datagram(2.0, datagram_from("b", B, codec.suspect(0, "a", "b")), B)
    alive = [m for m in messages_to(a, B) if m[0] == codec.MsgType.ALIVE]
    assert alive
    assert alive[0][1] == 1
    assert a.incarnation == 1  # no new refutation needed


def test_refutation_clears_suspicion_and_reports_alive() -> None:
    a, _b = joined_pair()
    a.handle_datagram(1.0, datagram_from("c", C, codec.suspect(0, "b", "c")), C)
    assert a.status_of("b") is MemberStatus.SUSPECT
    a.handle_datagram(1.5, datagram_from("b", B, codec.alive(1, "b", B, {})), B)
    assert a.status_of("b") is MemberStatus.ALIVE
    kinds_seen = [e.kind for e in a.drain().events]
    assert kinds_seen == [EventKind.SUSPECT, EventKind.ALIVE]


def test_old_incarnations_do_not_override_newer_news() -> None:
    a, _b = joined_pair()
    a.handle_datagram(1.0, datagram_from("b", B, codec.alive(5, "b", B, {"agents": 1})), B)
    a.handle_datagram(1.1, datagram_from("c", C, codec.suspect(4, "b", "c")), C)
    a.handle_datagram(1.2, datagram_from("c", C, codec.dead(3, "b", "c")), C)
    assert a.status_of("b") is MemberStatus.ALIVE
    a.handle_datagram(1.3, datagram_from("c", C, codec.dead(5, "b", "c")), C)
    assert a.status_of("b") is MemberStatus.FAILED
    # Same incarnation cannot resurrect a failed member.
    a.handle_datagram(1.4, datagram_from("b", B, codec.alive(5, "b", B, {})), B)
    assert a.status_of("b") is MemberStatus.FAILED
    a.handle_datagram(1.5, datagram_from("b", B, codec.alive(6, "b", B, {})), B)
    assert a.status_of("b") is MemberStatus.ALIVE
    joined = [e for e in a.drain().events if e.kind is EventKind.JOINED]
    assert joined[-1].member.incarnation == 6


def test_restarted_node_reclaims_its_name_with_a_higher_incarnation() -> None:
    a, _b = joined_pair()
    a.handle_datagram(1.0, datagram_from("c", C, codec.dead(0, "b", "c")), C)
    assert a.status_of("b") is MemberStatus.FAILED
    restarted = make("b", B, now=5.0)
    sync(restarted, a, 5.0)  # learns it is dead at incarnation 0
    assert restarted.incarnation == 1
    restarted.tick(restarted.next_deadline())
    for datagram in restarted.drain().datagrams:
        if datagram.address == A:
            a.handle_datagram(5.1, datagram.payload, B)
    assert a.status_of("b") is MemberStatus.ALIVE


def test_left_is_announced_and_not_a_failure() -> None:
    a, b = joined_pair()
    b.leave(1.0)
    assert b.local_member().status is MemberStatus.LEFT
    for datagram in b.drain().datagrams:
        a.handle_datagram(1.01, datagram.payload, B)
    assert a.status_of("b") is MemberStatus.LEFT
    assert [e.kind for e in a.drain().events] == [EventKind.LEFT]
    # A suspicion arriving later does not turn it into a failure.
    a.handle_datagram(2.0, datagram_from("c", C, codec.dead(0, "b", "c")), C)
    assert a.status_of("b") is MemberStatus.LEFT


def test_leaving_node_does_not_refute() -> None:
    _a, b = joined_pair()
    b.leave(1.0)
    b.handle_datagram(1.1, datagram_from("a", A, codec.suspect(0, "b", "a")), A)
    assert b.incarnation == 0


def test_a_metadata_change_while_leaving_does_not_undo_the_leave() -> None:
    # A drain moves the node's agents off just before the leave: the agent count in its
    # metadata changes after the announcement. A new incarnation would outrank "left"
    # and the others would see the node join again, then fail.
    a, b = joined_pair()
    b.leave(1.0)
    b.update_meta(1.05, {"agents": 0})
    assert b.incarnation == 0
    b.tick(b.next_deadline())
    for datagram in b.drain().datagrams:
        a.handle_datagram(1.3, datagram.payload, B)
    assert a.status_of("b") is MemberStatus.LEFT
    assert [e.kind for e in a.drain().events] == [EventKind.LEFT]


def test_leave_completes_once_announced_enough() -> None:
    _a, b = joined_pair()
    b.leave(1.0)
    now = 1.0
    while not b.leave_done and now < 10:
        now = b.next_deadline()
        b.tick(now)
    assert b.leave_done
    assert now - 1.0 <= b.settings.gossip_interval * b.retransmit_limit() + 0.01


def test_metadata_update_spreads_as_new_incarnation() -> None:
    a, b = joined_pair()
    b.update_meta(1.0, {"agents": 42, "region": "eu-west", "labels": {"tier": "gpu"}})
    b.tick(b.next_deadline())
    for datagram in b.drain().datagrams:
        a.handle_datagram(1.3, datagram.payload, B)
    member = a.member("b")
    assert member is not None
    assert member.meta == {"agents": 42, "region": "eu-west", "labels": {"tier": "gpu"}}
    assert [e.kind for e in a.drain().events] == [EventKind.UPDATED]


def test_force_remove_only_for_failed_members() -> None:
    a, _b = joined_pair()
    with pytest.raises(ValueError, match="alive"):
        a.remove(1.0, "b")
    a.handle_datagram(1.0, datagram_from("c", C, codec.dead(0, "b", "c")), C)
    a.remove(2.0, "b")
    assert a.status_of("b") is MemberStatus.LEFT
    with pytest.raises(KeyError):
        a.remove(2.0, "nobody")


def test_failed_members_are_rejoin_candidates_and_reaped_later() -> None:
    a, _b = joined_pair()
    a.handle_datagram(1.0, datagram_from("c", C, codec.dead(0, "b", "c")), C)
    assert B in a.rejoin_candidates()
    a.drain()
    a.tick(1.0 + a.settings.reconnect_timeout + 11)
    assert a.status_of("b") is None
    assert [e.kind for e in a.drain().events] == [EventKind.REMOVED]


def test_rejoin_contacts_failed_member_by_push_pull() -> None:
    a, b = joined_pair()
    a.handle_datagram(1.0, datagram_from("c", C, codec.dead(0, "b", "c")), C)
    a.drain()
    now = 1.0
    syncs = []
    while not syncs and now < 30:
        now = a.next_deadline()
        a.tick(now)
        syncs = [s for s in a.drain().syncs if s.purpose == "rejoin"]
    assert syncs[0].address == B
    reply = b.handle_sync(now, syncs[0].payload)  # b refutes before answering
    assert a.sync_done(now, syncs[0].token, reply)
    assert a.status_of("b") is MemberStatus.ALIVE


def test_malformed_input_is_counted_and_dropped() -> None:
    a = make("a", A)
    a.handle_datagram(1.0, b"\xc1garbage", B)
    a.handle_datagram(1.0, codec.pack([99, "b", "h", 1, [0]]), B)
    assert a.handle_sync(1.0, b"not msgpack at all \xc1") is None
    assert a.stats.malformed == 3


def test_piggybacked_gossip_respects_the_datagram_budget() -> None:
    a = make("a", A, datagram_budget=600)
    for i in range(60):
        address = (f"10.1.0.{i}", 7946)
        a.handle_datagram(
            0.0,
            datagram_from(f"n{i}", address, codec.alive(1, f"n{i}", address, {"cpu": 1})),
            address,
        )
    a.drain()
    a.tick(a.next_deadline())
    sizes = [len(d.payload) for d in a.drain().datagrams]
    assert sizes
    assert max(sizes) <= 600


def test_suspicion_timeout_shrinks_with_confirmations() -> None:
    suspicion = Suspicion("x", k=3, minimum=4.0, maximum=24.0, start=10.0)
    assert suspicion.deadline == 34.0
    assert not suspicion.confirm("x")  # the accuser does not confirm itself
    deadlines = []
    for accuser in ("y", "z", "w"):
        assert suspicion.confirm(accuser)
        deadlines.append(suspicion.deadline)
    assert deadlines == sorted(deadlines, reverse=True)
    assert deadlines[-1] == 14.0
    assert not suspicion.confirm("v")  # k reached


def test_suspicion_bounds_scale_with_log_of_cluster_size() -> None:
    settings = SwimSettings()
    assert suspicion_bounds(settings, 5) == (4.0, 24.0)
    low, high = suspicion_bounds(settings, 100)
    assert low == pytest.approx(8.0)
    assert high == pytest.approx(48.0)


def test_awareness_is_bounded_and_scales_timeouts() -> None:
    awareness = Awareness(8)
    awareness.apply(-3)
    assert awareness.score == 0
    awareness.apply(20)
    assert awareness.score == 7
    assert awareness.scale(0.5) == 4.0


def test_unhealthy_node_probes_more_patiently() -> None:
    a, _b = joined_pair()
    a.awareness.apply(3)
    a._next_probe = 0.0
    a.tick(0.0)
    probe = a._probe
    assert probe is not None
    assert probe.timeout_at == pytest.approx(4 * a.settings.probe_timeout)


def test_retransmit_limit_grows_with_log_n() -> None:
    assert retransmit_limit(4, 5) == 4
    assert retransmit_limit(4, 100) == 4 * math.ceil(math.log10(101))
    queue = BroadcastQueue(retransmit_mult=1)
    queue.queue("a", b"x" * 10)
    assert queue.take(100, cluster_size=5) == [b"x" * 10]
    assert queue.take(100, cluster_size=5) == []
    assert "a" in queue.finished


def test_broadcast_queue_keeps_only_the_newest_news_per_member() -> None:
    queue = BroadcastQueue()
    queue.queue("b", b"old")
    queue.queue("b", b"new")
    queue.queue("c", b"other")
    assert sorted(queue.take(1000, cluster_size=3)) == [b"new", b"other"]


def test_push_pull_interval_scales_above_32_members() -> None:
    assert push_pull_scale(30.0, 10) == 30.0
    assert push_pull_scale(30.0, 100) == 90.0


def test_seed_known_by_name_is_not_retried_while_its_node_lives() -> None:
    a = make("a", A)
    seed = ("seed.example.com", 7946)  # the name a seed is configured by
    b = make("b", B)
    (token,) = a.join(0.0, [seed])
    request = a.drain().syncs[0]
    assert a.sync_done(0.0, token, b.handle_sync(0.0, request.payload))
    assert a.rejoin_candidates() == []
    a.handle_datagram(1.0, datagram_from("c", C, codec.dead(0, "b", "c")), C)
    assert seed in a.rejoin_candidates()


def test_refutation_rides_in_the_ack_of_the_probe_that_carried_the_suspicion() -> None:
    a, _b = joined_pair()
    probe = datagram_from("b", B, codec.ping(9, "a"), codec.suspect(0, "a", "b"))
    a.handle_datagram(1.0, probe, B)
    datagrams = [d for d in a.drain().datagrams if d.address == B]
    assert len(datagrams) == 1
    messages = codec.decode_datagram(datagrams[0].payload)[1]
    assert messages[0] == [codec.MsgType.ACK, 9, 1]
    assert messages[1][:2] == [codec.MsgType.ALIVE, 1]


def test_a_suspect_that_pings_us_is_told_of_the_suspicion() -> None:
    a, _b = joined_pair()
    a.handle_datagram(1.0, datagram_from("c", C, codec.suspect(0, "b", "c")), C)
    a.drain()
    a.handle_datagram(1.1, datagram_from("b", B, codec.ping(5, "a")), B)
    messages = messages_to(a, B)
    assert [codec.MsgType.SUSPECT, 0, "b", "a"] in messages


def test_nack_reaches_the_origin_before_its_probe_round_ends() -> None:
    _a, b = joined_pair()
    b.handle_datagram(1.0, datagram_from("a", A, codec.ping_req(42, "c", C, True)), A)
    b.drain()
    # The origin sent the request probe_timeout into its round; the nack must arrive
    # before the round's end, or a healthy origin counts it as missed.
    nack_time = 1.0 + (b.settings.probe_round - b.settings.probe_timeout) * 0.9
    b.tick(nack_time)
    assert [codec.MsgType.NACK, 42] in messages_to(b, A)


def test_probing_a_dead_member_does_not_hurt_a_healthy_prober() -> None:
    sim = SimCluster(3)
    sim.start_nodes(10)
    sim.run_for(5)
    sim.kill("n4")
    sim.run_until(lambda: sim.all_see("n4", MemberStatus.FAILED), timeout=60)
    assert {node.core.awareness.score for node in sim.live_nodes()} == {0}  # type: ignore[attr-defined]


def test_an_ack_with_a_newer_incarnation_ends_the_suspicion() -> None:
    a, _b = joined_pair()
    a.handle_datagram(1.0, datagram_from("c", C, codec.suspect(0, "b", "c")), C)
    a.drain()
    a._next_probe = 1.0
    a._recheck_turn = False  # the next round rechecks the suspect b
    a.tick(1.0)
    (ping,) = [m for m in messages_to(a, B) if m[0] == codec.MsgType.PING]
    # b's refutation got lost; its ack (here relayed by a helper) says incarnation 1.
    a.handle_datagram(1.1, datagram_from("c", C, codec.ack(ping[1], 1)), C)
    assert a.status_of("b") is MemberStatus.ALIVE
    member = a.member("b")
    assert member is not None
    assert member.incarnation == 0  # the full ALIVE of incarnation 1 still applies
    a.handle_datagram(1.2, datagram_from("b", B, codec.alive(1, "b", B, {"agents": 2})), B)
    member = a.member("b")
    assert member is not None
    assert member.meta == {"agents": 2}


def test_every_member_is_probed_by_exactly_one_other_every_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shared probe ring: no member goes a round unprobed, none is probed twice,
    and its prober changes from round to round."""
    probes: list[tuple[int, str, str]] = []
    start_probe = SwimCore._start_probe

    def recording(core: SwimCore) -> None:
        start_probe(core)
        if core._probe is not None:
            shared_round = math.floor(core._now / core.settings.probe_interval)
            probes.append((shared_round, core._probe.target_id, core.node_id))

    sim = formed_cluster(3, 7)
    monkeypatch.setattr(SwimCore, "_start_probe", recording)
    sim.run_for(30.0)
    by_round: dict[int, list[tuple[str, str]]] = {}
    for shared_round, target, prober in probes:
        by_round.setdefault(shared_round, []).append((target, prober))
    complete = [by_round[r] for r in sorted(by_round)[1:-1]]
    assert len(complete) >= 25
    for pairs in complete:
        assert sorted(target for target, _ in pairs) == sorted(sim.nodes)
    probers_of_n0 = {prober for pairs in complete for target, prober in pairs if target == "n0"}
    assert len(probers_of_n0) >= 4
