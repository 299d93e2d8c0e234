"""The SWIM wire format: round trips, the datagram budget, and garbage from the network."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caxton.drivers.membership import MemberStatus
from caxton.membership import codec
from caxton.membership.codec import MalformedMessage, StateEntry
from caxton.membership.settings import SwimSettings
from caxton.membership.swim_core import SwimCore

ADDRESS = ("10.0.0.1", 7946)
node_ids = st.text(min_size=1, max_size=40)
incarnations = st.integers(0, 2**63)
metas = st.dictionaries(
    st.sampled_from(["agents", "cpu", "memory", "version", "region", "zone", "labels", "x"]),
    st.one_of(st.integers(0, 10**9), st.text(max_size=20), st.floats(allow_nan=False)),
    max_size=8,
)


@given(seq=st.integers(0, 2**32 - 1), target=node_ids, sender=node_ids)
def test_ping_round_trip(seq: int, target: str, sender: str) -> None:
    payload = codec.DatagramBuilder(sender, ADDRESS).build([codec.ping(seq, target)])
    header, messages = codec.decode_datagram(payload)
    assert header == codec.Header(sender, ADDRESS)
    assert messages == [[codec.MsgType.PING, seq, target]]


@given(incarnation=incarnations, node_id=node_ids, meta=metas)
def test_alive_round_trip_restores_metadata_keys(
    incarnation: int, node_id: str, meta: dict[str, object]
) -> None:
    payload = codec.DatagramBuilder("x", ADDRESS).build(
        [codec.alive(incarnation, node_id, ADDRESS, meta)]
    )
    _, (message,) = codec.decode_datagram(payload)
    assert message == [codec.MsgType.ALIVE, incarnation, node_id, *ADDRESS, meta]


def test_well_known_metadata_keys_travel_short() -> None:
    long = codec.alive(1, "n", ADDRESS, {"agents": 1, "memory": 2, "version": "0.2"})
    raw = msgpack.unpackb(long)
    assert set(raw[5]) == {"a", "m", "v"}


@given(
    entries=st.lists(
        st.tuples(node_ids, incarnations, st.sampled_from(list(MemberStatus)), metas), max_size=20
    )
)
def test_sync_round_trip(entries: list[tuple[str, int, MemberStatus, dict[str, object]]]) -> None:
    rows = [StateEntry(n, ADDRESS, i, s, m) for n, i, s, m in entries]
    decoded = codec.decode_sync(codec.encode_sync("me", ADDRESS, "join", rows))
    assert decoded.header.sender_id == "me"
    assert decoded.purpose == "join"
    assert decoded.entries == rows


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_malformed(data: bytes) -> None:
    for decode in (codec.decode_datagram, codec.decode_sync):
        try:
            decode(data)
        except MalformedMessage:
            pass


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.text(max_size=8),
        st.binary(max_size=8),
    ),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150)
@given(st.lists(msgpack_values, min_size=0, max_size=8))
def test_well_formed_msgpack_of_the_wrong_shape_never_crashes_the_core(
    items: list[object],
) -> None:
    core = SwimCore("me", ADDRESS, SwimSettings(), now=0.0)
    for prefix in ([], [codec.VERSION, "peer", "10.0.0.2", 7946]):
        payload = msgpack.packb(prefix + items)
        core.handle_datagram(1.0, payload, ("10.0.0.2", 7946))
        core.handle_sync(1.0, payload)
        core.tick(core.next_deadline())
    assert core.status_of("me") is MemberStatus.ALIVE
    assert core.stats.malformed >= 1


@pytest.mark.parametrize(
    "message",
    [
        [codec.MsgType.PING, -1, "a"],
        [codec.MsgType.PING, 1],
        [codec.MsgType.ALIVE, 1, "n", "h", 70000, {}],
        [codec.MsgType.ALIVE, 1, "n", "h", 1, {1: 2}],
        [codec.MsgType.PING_REQ, 1, "n", "h", 1, "yes"],
        [42, 1],
        "not a list",
    ],
)
def test_invalid_fields_are_malformed(message: object) -> None:
    payload = msgpack.packb([codec.VERSION, "peer", "h", 1, message])
    with pytest.raises(MalformedMessage):
        codec.decode_datagram(payload)


def test_other_protocol_versions_are_refused() -> None:
    with pytest.raises(MalformedMessage, match="version"):
        codec.decode_datagram(msgpack.packb([99, "peer", "h", 1, [codec.MsgType.ACK, 1, 0]]))


def test_compound_datagram_fits_the_budget() -> None:
    builder = codec.DatagramBuilder("sender", ADDRESS)
    message = codec.alive(1, "n" * 20, ADDRESS, {"agents": 10, "region": "eu-west"})
    count = builder.room // len(message)
    payload = builder.build([message] * count)
    assert len(payload) <= codec.DATAGRAM_BUDGET
    assert len(codec.decode_datagram(payload)[1]) == count
