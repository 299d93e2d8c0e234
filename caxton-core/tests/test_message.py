"""The FIPA-ACL message model: performatives, priorities, validation, JSON."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caxton.errors import MessageTooLarge, ValidationError
from caxton.messaging import Message, Performative, Priority, new_message_id
from caxton.messaging.message import dumps, loads

P = Performative

SPELLINGS = {
    P.REQUEST: ["request", "REQUEST", "Request", " request "],
    P.INFORM: ["inform", "INFORM", "Inform"],
    P.CFP: ["cfp", "CFP", "Cfp", "call-for-proposal", "CALL_FOR_PROPOSAL", "CallForProposal"],
    P.PROPOSE: ["propose", "PROPOSE", "Propose"],
    P.ACCEPT_PROPOSAL: [
        "accept-proposal",
        "ACCEPT_PROPOSAL",
        "AcceptProposal",
        "accept_proposal",
        "ACCEPT-PROPOSAL",
        "acceptProposal",
    ],
    P.REJECT_PROPOSAL: ["reject-proposal", "REJECT_PROPOSAL", "RejectProposal"],
    P.AGREE: ["agree", "AGREE", "Agree"],
    P.REFUSE: ["refuse", "REFUSE", "Refuse"],
    P.FAILURE: ["failure", "FAILURE", "Failure"],
    P.NOT_UNDERSTOOD: ["not-understood", "NOT_UNDERSTOOD", "NotUnderstood", "not_understood"],
    P.QUERY_IF: ["query-if", "QUERY_IF", "QueryIf", "query_if"],
    P.QUERY_REF: ["query-ref", "QUERY_REF", "QueryRef"],
    P.CANCEL: ["cancel", "CANCEL", "Cancel"],
    P.SUBSCRIBE: ["subscribe", "SUBSCRIBE", "Subscribe"],
    P.CONFIRM: ["confirm", "CONFIRM", "Confirm"],
    P.DISCONFIRM: ["disconfirm", "DISCONFIRM", "Disconfirm"],
    P.PROPAGATE: ["propagate", "PROPAGATE", "Propagate"],
    P.PROXY: ["proxy", "PROXY", "Proxy"],
    P.REQUEST_WHEN: ["request-when", "REQUEST_WHEN", "RequestWhen"],
    P.REQUEST_WHENEVER: ["request-whenever", "REQUEST_WHENEVER", "RequestWhenever"],
    P.INFORM_IF: ["inform-if", "INFORM_IF", "InformIf"],
    P.INFORM_REF: ["inform-ref", "INFORM_REF", "InformRef"],
}


@pytest.mark.parametrize(
    ("expected", "spelling"),
    [(p, s) for p, spellings in SPELLINGS.items() for s in spellings],
)
def test_every_spelling_of_every_performative_parses(expected: P, spelling: str) -> None:
    assert Performative.parse(spelling) is expected
    assert (
        Message.from_dict({"performative": spelling, "sender": "a", "receiver": "b"}).performative
        is expected
    )


def test_every_performative_is_covered_by_the_spelling_table() -> None:
    assert set(Performative) == set(SPELLINGS)


def test_call_for_proposal_is_an_alias_of_cfp() -> None:
    assert Performative["CALL_FOR_PROPOSAL"] is Performative.CFP
    assert Performative("ACCEPT_PROPOSAL") is Performative.ACCEPT_PROPOSAL
    assert str(Performative.ACCEPT_PROPOSAL) == "accept-proposal"


@pytest.mark.parametrize("bad", ["requets", "", "accept", 3, None])
def test_unknown_performative_names_the_allowed_values(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        Performative.parse(bad)  # type: ignore[arg-type]
    text = str(info.value)
    assert text.startswith(f"Unknown performative {bad!r}: expected one of ")
    for performative in ("accept-proposal", "cfp", "request", "not-understood", "subscribe"):
        assert performative in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("critical", Priority.CRITICAL),
        ("HIGH", Priority.HIGH),
        ("Normal", Priority.NORMAL),
        ("low", Priority.LOW),
        (0, Priority.CRITICAL),
        (3, Priority.LOW),
        ("1", Priority.HIGH),
        (Priority.LOW, Priority.LOW),
    ],
)
def test_priorities_parse_from_names_and_numbers(value: object, expected: Priority) -> None:
    assert Priority.parse(value) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["urgent", 4, -1, True, "7", None])
def test_unknown_priority_names_the_allowed_values(bad: object) -> None:
    with pytest.raises(ValidationError, match=r"^Unknown priority .*critical \(0\), high \(1\)"):
        Priority.parse(bad)  # type: ignore[arg-type]


def test_priority_order_puts_critical_first() -> None:
    assert sorted([Priority.LOW, Priority.CRITICAL, Priority.NORMAL, Priority.HIGH]) == [
        Priority.CRITICAL,
        Priority.HIGH,
        Priority.NORMAL,
        Priority.LOW,
    ]


def test_defaults_and_conversions_in_the_constructor() -> None:
    message = Message("Request", "a", "b", priority="high", receivers=["b", "c"])  # type: ignore[arg-type]
    assert message.performative is P.REQUEST
    assert message.priority is Priority.HIGH
    assert message.receivers == ("b", "c")
    assert message.content is None
    assert message.conversation_id is None
    assert re.fullmatch(r"[0-9a-f]{32}", message.message_id)
    assert uuid.UUID(hex=message.message_id).version == 4


def test_receiver_defaults_to_the_first_of_receivers() -> None:
    assert Message(P.CFP, "a", "", receivers=("b", "c")).receiver == "b"


def test_message_ids_are_unique_uuid4() -> None:
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(
        uuid.UUID(hex=i).version == 4 and uuid.UUID(hex=i).variant == uuid.RFC_4122 for i in ids
    )


def test_to_dict_leaves_out_unset_fields() -> None:
    message = Message(P.INFORM, "a", "b", message_id="m1")
    assert message.to_dict() == {
        "performative": "inform",
        "sender": "a",
        "receiver": "b",
        "message_id": "m1",
        "priority": "normal",
    }


def test_json_roundtrip_keeps_every_field() -> None:
    message = Message(
        P.ACCEPT_PROPOSAL,
        "a",
        "b",
        {"price": 3, "items": ["x", "ü"]},
        language="json",
        ontology="shop",
        protocol="fipa-contract-net",
        conversation_id="c1",
        reply_with="r1",
        in_reply_to="r0",
        reply_by=1_900_000_000.5,
        priority=Priority.CRITICAL,
        receivers=("b", "c"),
    )
    data = message.to_json()
    assert json.loads(data)["performative"] == "accept-proposal"
    again = Message.from_json(data)
    assert again == message
    assert again.wire_size == len(data)


def test_from_dict_accepts_fipa_hyphenated_names_and_iso_reply_by() -> None:
    message = Message.from_dict(
        {
            "performative": "QUERY_IF",
            "sender": "a",
            "receiver": "b",
            "conversation-id": "c",
            "reply-with": "r",
            "in-reply-to": "q",
            "reply-by": "2030-01-01T00:00:00Z",
            "message-id": "m",
        }
    )
    assert (message.conversation_id, message.reply_with, message.in_reply_to) == ("c", "r", "q")
    assert message.reply_by == 1893456000.0
    assert message.message_id == "m"


@pytest.mark.parametrize(
    ("reply_by", "expected"),
    [
        ("2030-01-01T01:00:00+01:00", 1893456000.0),
        ("2030-01-01T00:00:00", 1893456000.0),  # naive means UTC
        (1893456000, 1893456000.0),
        (1893456000.25, 1893456000.25),
    ],
)
def test_reply_by_forms(reply_by: object, expected: float) -> None:
    message = Message.from_dict(
        {"performative": "request", "sender": "a", "receiver": "b", "reply_by": reply_by}
    )
    assert message.reply_by == expected


def test_receiver_may_be_a_list() -> None:
    message = Message.from_dict({"performative": "cfp", "sender": "a", "receiver": ["b", "c"]})
    assert message.receivers == ("b", "c")
    assert message.receiver == "b"
    message = Message.from_dict({"performative": "cfp", "sender": "a", "receivers": ["b", "c"]})
    assert message.receivers == ("b", "c")
    assert message.receiver == "b"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"sender": "a", "receiver": "b"}, "Invalid message: missing field 'performative'"),
        ({"performative": "inform", "receiver": "b"}, "Invalid message: missing field 'sender'"),
        ({"performative": "inform", "sender": "a"}, "Invalid message: missing field 'receiver'"),
        (
            {"performative": 7, "sender": "a", "receiver": "b"},
            "Invalid message: field 'performative' must be a string, got 7",
        ),
        (
            {"performative": "inform", "sender": "", "receiver": "b"},
            "Invalid message: field 'sender' must be a name (a non-empty string), got ''",
        ),
        (
            {"performative": "inform", "sender": 5, "receiver": "b"},
            "Invalid message: field 'sender' must be a name (a non-empty string), got 5",
        ),
        (
            {"performative": "inform", "sender": "a", "receiver": "b", "reply_by": "tomorrow"},
            "Invalid message: field 'reply_by' must be Unix seconds or an ISO-8601 time",
        ),
        (
            {"performative": "inform", "sender": "a", "receiver": "b", "reply_by": -5},
            "Invalid message: field 'reply_by' must be Unix seconds",
        ),
        (  # before 1970 once its offset applies: iso_time of it raised (year 0)
            {
                "performative": "inform",
                "sender": "a",
                "receiver": "b",
                "reply_by": "0001-01-01T00:00+01:00",
            },
            "Invalid message: field 'reply_by' must be Unix seconds",
        ),
        (
            {"performative": "inform", "sender": "a", "receiver": "b", "priority": "urgent"},
            "Unknown priority 'urgent'",
        ),
        (
            {"performative": "inform", "sender": "a", "receiver": "b", "conversation_id": 12},
            "Invalid message: field 'conversation_id' must be a string (a non-empty string)",
        ),
        (
            {"performative": "inform", "sender": "a", "receivers": []},
            "Invalid message: field 'receivers' must be a non-empty list of agent names",
        ),
        (
            {"performative": "inform", "sender": "a", "receivers": ["b", None]},
            "Invalid message: field 'receivers' holds an empty name",
        ),
        (
            {"performative": "inform", "sender": "a" * 256, "receiver": "b"},
            "Invalid message: field 'sender' is 256 characters long; the limit is 255",
        ),
        (
            {"performative": "tell", "sender": "a", "receiver": "b"},
            "Unknown performative 'tell': expected one of accept-proposal",
        ),
    ],
)
def test_from_dict_errors_name_the_field(data: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError) as info:
        Message.from_dict(data)
    assert str(info.value).startswith(error)


def test_unknown_fields_are_ignored_unless_strict() -> None:
    data = {"performative": "inform", "sender": "a", "receiver": "b", "x-trace": "t1"}
    assert Message.from_dict(data).to_dict().keys() == {
        "performative",
        "sender",
        "receiver",
        "message_id",
        "priority",
    }
    typo = {"performative": "inform", "sender": "a", "receiver": "b", "reciever": "c"}
    with pytest.raises(ValidationError) as info:
        Message.from_dict(typo, strict=True)
    assert str(info.value).startswith(
        "Invalid message: unknown field 'reciever' (did you mean 'receiver'?); fields are "
        "performative, sender, receiver, receivers, content"
    )
    with pytest.raises(ValidationError, match="unknown field 'reciever'"):
        Message.from_json(json.dumps(typo), strict=True)


def test_camel_case_field_names_are_accepted() -> None:
    message = Message.from_dict(
        {
            "performative": "inform",
            "sender": "a",
            "receiver": "b",
            "conversationId": "c",
            "replyWith": "r",
            "inReplyTo": "q",
            "replyBy": 1893456000,
            "messageId": "m",
        }
    )
    assert (message.conversation_id, message.reply_with, message.in_reply_to) == ("c", "r", "q")
    assert (message.reply_by, message.message_id) == (1893456000.0, "m")


def test_from_dict_refuses_a_non_object() -> None:
    with pytest.raises(
        ValidationError, match=r"^Invalid message: expected a JSON object, got list"
    ):
        Message.from_dict([1, 2])  # type: ignore[arg-type]


def test_from_json_errors() -> None:
    with pytest.raises(ValidationError, match=r"^Invalid message JSON: "):
        Message.from_json(b"{not json")
    with pytest.raises(ValidationError, match=r"^Invalid message: not UTF-8"):
        Message.from_json(b"\xff\xfe{}")
    with pytest.raises(ValidationError, match=r"^Invalid message: expected a JSON object"):
        Message.from_json(b"[]")


def test_from_json_refuses_oversized_input_before_parsing() -> None:
    data = b'{"performative": "inform"' + b" " * 100 + b"}"
    with pytest.raises(MessageTooLarge) as info:
        Message.from_json(data, max_size=64)
    assert str(info.value) == (
        f"Message too large: {len(data)} bytes exceeds max_message_bytes (64 bytes)"
    )
    assert info.value.http_status == 413


def test_msgpack_roundtrip_and_errors() -> None:
    message = Message(P.PROPOSE, "a", "b", {"price": [1, 2.5, "x"]}, reply_by=1893456000.5)
    data = message.to_msgpack()
    again = Message.from_msgpack(data)
    assert again == message
    assert again.wire_size == len(data)
    with pytest.raises(MessageTooLarge):
        Message.from_msgpack(data, max_size=10)
    with pytest.raises(ValidationError, match=r"^Invalid message MessagePack: "):
        Message.from_msgpack(b"\xc1")
    with pytest.raises(ValidationError, match=r"^Invalid message: expected a JSON object"):
        Message.from_msgpack(b"\x93\x01\x02\x03")
    with pytest.raises(ValidationError, match="cannot be encoded as MessagePack"):
        Message(P.INFORM, "a", "b", object()).to_msgpack()


def test_to_json_of_unserializable_content_is_a_clear_error() -> None:
    with pytest.raises(
        ValidationError, match=r"^Invalid message: content is not JSON-serializable"
    ):
        Message(P.INFORM, "a", "b", object()).to_json()


def test_create_reply_swaps_parties_and_keeps_the_conversation() -> None:
    request = Message(
        P.REQUEST,
        "a",
        "b",
        "go",
        protocol="fipa-request",
        conversation_id="c",
        reply_with="r1",
        language="en",
        ontology="o",
        priority=Priority.HIGH,
    )
    reply = request.create_reply(P.AGREE, "ok")
    assert (reply.sender, reply.receiver) == ("b", "a")
    assert reply.in_reply_to == "r1"
    assert (reply.conversation_id, reply.protocol, reply.language, reply.ontology) == (
        "c",
        "fipa-request",
        "en",
        "o",
    )
    assert reply.priority is Priority.HIGH
    assert reply.content == "ok"
    assert reply.performative is P.AGREE
    assert reply.message_id != request.message_id


def test_create_reply_without_reply_with_answers_the_message_id() -> None:
    request = Message(P.REQUEST, "a", "b")
    assert request.create_reply("inform").in_reply_to == request.message_id
    assert request.reply_token == request.message_id


def test_create_reply_to_a_multi_receiver_message_needs_a_sender() -> None:
    cfp = Message(P.CFP, "a", "", receivers=("b", "c"))
    assert cfp.create_reply(P.PROPOSE, sender="c").sender == "c"
    cfp.receiver = ""
    with pytest.raises(ValidationError, match="pass sender="):
        cfp.create_reply(P.PROPOSE)


# -- property-based ------------------------------------------------------------------

#: Names and ids: any text UTF-8 can encode but NUL (both refused: test_store_boundary).
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
optional_names = st.none() | names
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=30)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.builds(
    Message,
    performative=st.sampled_from(list(Performative)),
    sender=names,
    receiver=names,
    content=json_values,
    language=optional_names,
    ontology=optional_names,
    protocol=optional_names,
    conversation_id=optional_names,
    reply_with=optional_names,
    in_reply_to=optional_names,
    reply_by=st.none() | st.floats(min_value=0, max_value=4e9),
    message_id=names,
    priority=st.sampled_from(list(Priority)),
    receivers=st.lists(names, max_size=4).map(tuple),
)


@given(messages)
def test_to_dict_from_dict_roundtrip(message: Message) -> None:
    assert Message.from_dict(message.to_dict()) == message


@given(messages)
def test_json_roundtrip(message: Message) -> None:
    assert Message.from_json(message.to_json()) == message


@given(messages)
def test_msgpack_property_roundtrip(message: Message) -> None:
    assert Message.from_msgpack(message.to_msgpack()) == message


@pytest.mark.parametrize(
    "content",
    [2**70, {1: "int key"}, "\ud800", [1.5, "é", None, True]],
    ids=["huge-int", "int-key", "lone-surrogate", "plain"],
)
def test_json_codec_encodes_what_the_standard_library_does(content: object) -> None:
    """orjson first; what it refuses falls back to json, with json's result or error."""
    standard = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    try:
        expected: bytes | type[Exception] = standard(content).encode()
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            dumps(content)
    else:
        assert dumps(content) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"n": NaN}',
        '{"big": 123456789012345678901234567890}',
        "[-9223372036854775809, 18446744073709551616]",
        '"\\ud800"',
        '{"a": 1}',
    ],
)
def test_json_codec_parses_what_the_standard_library_does(text: str) -> None:
    parsed = loads(text.encode())
    expected = json.loads(text)
    assert repr(parsed) == repr(expected)


def test_json_codec_fails_like_the_standard_library() -> None:
    with pytest.raises(ValueError, match="Expecting"):
        loads(b'{"a": }')
    with pytest.raises(UnicodeDecodeError):
        loads(b'"\xff"')
