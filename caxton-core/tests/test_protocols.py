"""Interaction protocols: fipa-request, fipa-query and fipa-contract-net."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caxton.errors import AgentNotFound, ProtocolViolation, ValidationError
from caxton.messaging import PROTOCOLS, InteractionProtocol, Message, Performative, Router
from caxton.messaging.protocols import CONTRACT_NET, REQUEST
from caxton.testing.messaging import Recorder

P = Performative


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    r = Router(node_id="n1", cleanup_interval=0)
    await r.start()
    yield r
    await r.close()


def request(**kw: object) -> Message:
    fields: dict[str, object] = {"protocol": "fipa-request", "conversation_id": "c1"} | kw
    return Message(P.REQUEST, "a", "b", "do it", **fields)  # type: ignore[arg-type]


async def test_fipa_request_happy_path(router: Router) -> None:
    a, b = Recorder(), Recorder()
    router.register("a", a)
    router.register("b", b)
    await router.send(request())
    assert router.conversation("c1").state == "requested"  # type: ignore[union-attr]
    await router.send(b.messages[0].create_reply(P.AGREE))
    assert router.conversation("c1").state == "agreed"  # type: ignore[union-attr]
    await router.send(b.messages[0].create_reply(P.INFORM, "done"))
    conversation = router.conversation("c1")
    assert conversation is not None
    assert conversation.state == "done"
    assert conversation.finished
    assert conversation.roles == {"b": "done"}
    assert conversation.message_count == 3
    assert a.performatives == ["agree", "inform"]


@pytest.mark.parametrize(
    ("answers", "state"),
    [
        ([P.REFUSE], "refused"),
        ([P.INFORM], "done"),  # agree is optional
        ([P.FAILURE], "failed"),
        ([P.AGREE, P.FAILURE], "failed"),
        ([P.NOT_UNDERSTOOD], "not-understood"),
    ],
)
async def test_fipa_request_outcomes(router: Router, answers: list[P], state: str) -> None:
    a, b = Recorder(), Recorder()
    router.register("a", a)
    router.register("b", b)
    await router.send(request())
    for answer in answers:
        await router.send(b.messages[0].create_reply(answer))
    assert router.conversation("c1").state == state  # type: ignore[union-attr]
    assert a.performatives == [p.value for p in answers]


async def test_fipa_request_cancel(router: Router) -> None:
    a, b = Recorder(), Recorder()
    router.register("a", a)
    router.register("b", b)
    await router.send(request(reply_with="r"))
    await router.send(b.messages[0].create_reply(P.AGREE))
    await router.send(Message(P.CANCEL, "a", "b", protocol="fipa-request", conversation_id="c1"))
    assert router.conversation("c1").state == "cancelling"  # type: ignore[union-attr]
    await router.send(b.messages[0].create_reply(P.INFORM, "cancelled"))
    assert router.conversation("c1").state == "cancelled"  # type: ignore[union-attr]


async def test_out_of_protocol_answer_gets_not_understood(router: Router) -> None:
    a, b = Recorder(), Recorder()
    router.register("a", a)
    router.register("b", b)
    await router.send(request())
    await router.send(b.messages[0].create_reply(P.REFUSE))
    late_inform = b.messages[0].create_reply(P.INFORM, "changed my mind")
    await router.send(late_inform)  # no exception: b is told in a message
    assert a.performatives == ["refuse"]  # the inform never reached a
    [notice] = b.messages[1:]
    assert notice.performative is P.NOT_UNDERSTOOD
    assert (notice.sender, notice.receiver) == ("a", "b")
    assert notice.conversation_id == "c1"
    assert notice.in_reply_to == late_inform.message_id
    assert notice.content == {
        "reason": "out-of-protocol",
        "error": "inform from b is out of protocol: fipa-request exchange with b is refused; "
        "it is over",
        "message_id": late_inform.message_id,
    }
    assert router.conversation("c1").state == "refused"  # type: ignore[union-attr]
    assert router.queue_stats()["totals"]["not_understood"] == 1


async def test_a_protocol_must_start_with_its_opening_act(router: Router) -> None:
    a = Recorder()
    router.register("a", a)
    router.register("b", Recorder())
    await router.send(Message(P.INFORM, "a", "b", protocol="fipa-request"))
    [notice] = a.messages
    assert notice.performative is P.NOT_UNDERSTOOD
    assert notice.content["error"] == (
        "inform cannot start a fipa-request conversation; it starts with request"
    )


async def test_a_protocol_message_without_conversation_id_gets_one(router: Router) -> None:
    b = Recorder()
    router.register("b", b)
    message = Message(P.REQUEST, "a", "b", protocol="fipa-request")
    await router.send(message)
    assert b.messages[0].conversation_id == message.message_id
    assert router.conversation(message.message_id) is not None


async def test_wrong_party_or_wrong_protocol_in_a_conversation(router: Router) -> None:
    for name in ("a", "b", "c"):
        router.register(name, Recorder())
    await router.send(request())
    await router.send(Message(P.INFORM, "c", "b", protocol="fipa-request", conversation_id="c1"))
    await router.send(Message(P.INFORM, "b", "a", protocol="fipa-query", conversation_id="c1"))
    notices = [
        m
        for name in ("b", "c")
        for m in _recorder(router, name).messages
        if m.performative is P.NOT_UNDERSTOOD
    ]
    errors = sorted(n.content["error"] for n in notices)
    assert errors == [
        "c -> b is not between the initiator a and a participant of conversation c1",
        "conversation c1 follows fipa-request, not fipa-query",
    ]


def _recorder(router: Router, name: str) -> Recorder:
    deliver = router._boxes[name].deliver
    assert isinstance(deliver, Recorder)
    return deliver


async def test_out_of_protocol_from_an_unregistered_sender_raises(router: Router) -> None:
    router.register("b", Recorder())
    with pytest.raises(ProtocolViolation) as info:
        await router.send(Message(P.AGREE, "client", "b", protocol="fipa-request"))
    assert str(info.value) == (
        "Out-of-protocol message: agree cannot start a fipa-request conversation; "
        "it starts with request"
    )
    assert info.value.http_status == 400


async def test_unknown_protocols_are_tracked_but_not_checked(router: Router) -> None:
    router.register("b", Recorder())
    await router.send(Message(P.INFORM, "a", "b", protocol="my-protocol", conversation_id="x"))
    await router.send(Message(P.CANCEL, "a", "b", protocol="my-protocol", conversation_id="x"))
    conversation = router.conversation("x")
    assert conversation is not None
    assert (conversation.protocol, conversation.state, conversation.message_count) == (
        "my-protocol",
        "active",
        2,
    )


async def test_fipa_query(router: Router) -> None:
    a, b = Recorder(), Recorder()
    router.register("a", a)
    router.register("b", b)
    await router.send(Message(P.QUERY_REF, "a", "b", "price?", protocol="fipa-query"))
    await router.send(b.messages[0].create_reply(P.INFORM, 42))
    conversation = router.conversation(b.messages[0].conversation_id or "")
    assert conversation is not None
    assert conversation.state == "done"


async def test_replying_to_a_not_understood_out_of_protocol_cannot_loop(router: Router) -> None:
    def stubborn(message: Message) -> None:  # answers everything with inform
        router.send_nowait(message.create_reply(P.INFORM, "whatever"))

    router.register("a", Recorder())
    router.register("b", stubborn)
    await router.send(request())
    await router.send(Message(P.INFORM, "b", "a", protocol="fipa-request", conversation_id="c1"))
    assert await router.drain(5) == 0
    assert router.queue_stats()["totals"]["sent"] < 10
    [letter] = router.dead_letters()
    assert letter.reason.startswith("out of protocol: inform from b is out of protocol")


# -- contract net among agents -------------------------------------------------------------


async def test_contract_net_between_agents(router: Router) -> None:
    initiator = Recorder()
    router.register("i", initiator)
    bidders = {"p1": Recorder(), "p2": Recorder(), "p3": Recorder()}
    for name, recorder in bidders.items():
        router.register(name, recorder)
    await router.send(
        Message(
            P.CFP,
            "i",
            "",
            "job",
            protocol="fipa-contract-net",
            conversation_id="cn",
            receivers=("p1", "p2", "p3"),
        )
    )
    cfp = {name: r.messages[0] for name, r in bidders.items()}
    await router.send(cfp["p1"].create_reply(P.PROPOSE, 5))
    await router.send(cfp["p2"].create_reply(P.PROPOSE, 3))
    await router.send(cfp["p3"].create_reply(P.REFUSE))
    proposals = {m.sender: m for m in initiator.messages if m.performative is P.PROPOSE}
    await router.send(proposals["p2"].create_reply(P.ACCEPT_PROPOSAL, sender="i"))
    await router.send(proposals["p1"].create_reply(P.REJECT_PROPOSAL, sender="i"))
    conversation = router.conversation("cn")
    assert conversation is not None
    assert conversation.state == "active"
    assert conversation.roles == {"p1": "rejected", "p2": "accepted", "p3": "refused"}
    # p3 refused: accepting it now is out of protocol, and i is told
    await router.send(
        Message(P.ACCEPT_PROPOSAL, "i", "p3", protocol="fipa-contract-net", conversation_id="cn")
    )
    assert initiator.messages[-1].performative is P.NOT_UNDERSTOOD
    assert "p3 is refused" in initiator.messages[-1].content["error"]
    await router.send(bidders["p2"].messages[-1].create_reply(P.INFORM, "done"))
    assert conversation.state == "completed"
    assert conversation.roles["p2"] == "done"
    assert conversation.participants == {"i", "p1", "p2", "p3"}


async def test_contract_net_participant_may_not_propose_twice(router: Router) -> None:
    initiator, bidder = Recorder(), Recorder()
    router.register("i", initiator)
    router.register("p", bidder)
    await router.send(Message(P.CFP, "i", "p", protocol="fipa-contract-net"))
    await router.send(bidder.messages[0].create_reply(P.PROPOSE, 1))
    await router.send(bidder.messages[0].create_reply(P.PROPOSE, 2))
    assert bidder.messages[-1].performative is P.NOT_UNDERSTOOD
    assert bidder.messages[-1].content["error"] == (
        "propose from p is out of protocol: fipa-contract-net exchange with p is proposed; "
        "the participant may send not-understood"
    )


DOCS = Path(__file__).resolve().parents[2] / "docs" / "messaging.md"


def documented_transitions(heading: str) -> set[tuple[str, str, bool, str]]:
    """The ``state | initiator may send | participant may send`` table after ``heading``."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index(heading) :].split("\n\n")[1]
    found = set()
    for row in table.splitlines()[2:]:
        state, by_initiator, by_participant = (cell.strip() for cell in row.strip("|").split("|"))
        for cell, side in ((by_initiator, True), (by_participant, False)):
            for act, target in re.findall(r"`([a-z-]+)` → ([a-z-]+)", cell):
                found.add((state, act, side, target))
    return found


@pytest.mark.parametrize(
    ("heading", "spec"), [("`fipa-request` (", REQUEST), ("`fipa-contract-net`, for", CONTRACT_NET)]
)
def test_the_documented_tables_are_the_code(heading: str, spec: InteractionProtocol) -> None:
    in_code = {
        (state, act.value, side, target)
        for (state, act, side), target in spec.transitions.items()
        if act is not P.NOT_UNDERSTOOD  # documented once for all states
    }
    assert documented_transitions(heading) == in_code


def test_protocol_tables_are_consistent() -> None:
    assert set(PROTOCOLS) == {"fipa-request", "fipa-query", "fipa-contract-net"}
    for spec in PROTOCOLS.values():
        for (state, _performative, _side), target in spec.transitions.items():
            assert state not in spec.terminal, (spec.name, state)
            assert target
    assert REQUEST.next_state("start", P.REQUEST, True) == "requested"
    assert REQUEST.next_state("start", P.REQUEST, False) is None
    assert CONTRACT_NET.allowed("cfp", False) == ["not-understood", "propose", "refuse"]


# -- contract net for external clients -----------------------------------------------------


def bidder(
    router: Router, name: str, price: float | None, outcome: P = P.INFORM
) -> Callable[[Message], None]:
    def deliver(message: Message) -> None:
        if message.performative is P.CFP:
            if price is None:
                router.send_nowait(message.create_reply(P.REFUSE, "busy"))
            else:
                router.send_nowait(message.create_reply(P.PROPOSE, {"price": price}))
        elif message.performative is P.ACCEPT_PROPOSAL:
            router.send_nowait(message.create_reply(outcome, f"{name} did it"))

    return deliver


def cheapest(proposals: Mapping[str, Message]) -> str | None:
    return min(proposals, key=lambda n: proposals[n].content["price"], default=None)


async def test_contract_net_for_a_client(router: Router) -> None:
    router.register("cheap", bidder(router, "cheap", 3))
    router.register("dear", bidder(router, "dear", 9))
    router.register("busy", bidder(router, "busy", None))
    silent = Recorder()
    router.register("silent", silent)
    started = time.time()
    result = await router.contract_net(
        "client",
        ["dear", "cheap", "busy", "silent"],
        {"task": "x"},
        deadline=0.5,  # the silent participant makes it wait this long
        select=cheapest,
    )
    assert result.winner == "cheap"
    assert set(result.proposals) == {"dear", "cheap"}
    assert set(result.refusals) == {"busy"}
    assert result.no_answer == ("silent",)
    assert result.result is not None
    assert result.result.content == "cheap did it"
    assert result.succeeded
    assert not router.is_registered("client")
    cfp = silent.messages[0]
    assert cfp.protocol == "fipa-contract-net"
    assert cfp.reply_by is not None
    assert cfp.reply_by >= started
    conversation = router.conversation(result.conversation_id)
    assert conversation is not None
    assert conversation.roles["cheap"] == "done"
    assert conversation.roles["dear"] == "rejected"


async def test_contract_net_returns_early_when_everyone_answered(router: Router) -> None:
    router.register("p1", bidder(router, "p1", 1))
    router.register("p2", bidder(router, "p2", 2, outcome=P.FAILURE))
    result = await router.contract_net(
        "client", ["p1", "p2"], None, deadline=3600, select=lambda p: "p2"
    )  # returns at once: a one-hour deadline would otherwise hang the test
    assert result.winner == "p2"
    assert result.result is not None
    assert result.result.performative is P.FAILURE
    assert not result.succeeded


async def test_contract_net_without_proposals_has_no_winner(router: Router) -> None:
    router.register("p1", bidder(router, "p1", None))
    result = await router.contract_net("client", ["p1"], None, deadline=5)
    assert result.winner is None
    assert result.result is None
    assert set(result.refusals) == {"p1"}


async def test_contract_net_errors(router: Router) -> None:
    router.register("p1", bidder(router, "p1", 1))
    with pytest.raises(ValidationError, match="no participants"):
        await router.contract_net("client", [], None, deadline=1)
    with pytest.raises(ValidationError, match="participants repeat a name"):
        await router.contract_net("client", ["p1", "p1"], None, deadline=1)
    with pytest.raises(ValidationError, match="is also a participant"):
        await router.contract_net("p1", ["p1"], None, deadline=1)
    with pytest.raises(ValidationError, match=r"deadline must be seconds from now"):
        await router.contract_net("client", ["p1"], None, deadline=time.time() + 5)
    with pytest.raises(AgentNotFound, match=r"^Agent not found: ghost$"):
        await router.contract_net("client", ["p1", "ghost"], None, deadline=1)
    with pytest.raises(ValidationError, match=r"select\(\) chose 'p9', which made no proposal"):
        await router.contract_net("client", ["p1"], None, deadline=1, select=lambda p: "p9")
    assert not router.is_registered("client")


# -- property: the router enforces exactly the protocol tables -------------------------

REQUEST_ACTS = [P.REQUEST, P.AGREE, P.REFUSE, P.INFORM, P.FAILURE, P.CANCEL, P.NOT_UNDERSTOOD]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(REQUEST_ACTS)), min_size=1, max_size=8))
def test_fipa_request_enforcement_matches_the_table(steps: list[tuple[bool, P]]) -> None:
    """Random acts between a and b: delivered exactly when the table allows them."""

    async def scenario() -> None:
        router = Router(node_id="n1")
        inboxes = {"a": Recorder(), "b": Recorder()}
        for name, inbox in inboxes.items():
            router.register(name, inbox)
        state, initiator = "start", None
        for a_sends, act in steps:
            sender, receiver = ("a", "b") if a_sends else ("b", "a")
            inbox = inboxes[receiver]
            before = len(inbox.messages)
            await router.send(
                Message(act, sender, receiver, protocol="fipa-request", conversation_id="c")
            )
            from_initiator = initiator is None or sender == initiator
            expected = REQUEST.next_state(state, act, from_initiator)
            delivered = [m for m in inbox.messages[before:] if m.performative is act]
            assert bool(delivered) == (expected is not None), (state, sender, act)
            if expected is not None:
                state = expected
                initiator = initiator or sender
            conversation = router.conversation("c")
            if state == "start":
                assert conversation is None
            else:
                assert conversation is not None
                assert conversation.state == state
        await router.close()

    asyncio.run(scenario())


CONTRACT_NET_ACTS = [
    P.CFP, P.PROPOSE, P.REFUSE, P.ACCEPT_PROPOSAL, P.REJECT_PROPOSAL, P.INFORM, P.FAILURE,
    P.CANCEL,
]  # fmt: skip
LINKS = [("i", "p1"), ("i", "p2"), ("p1", "i"), ("p2", "i")]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(LINKS), st.sampled_from(CONTRACT_NET_ACTS)),
                min_size=1, max_size=10))  # fmt: skip
def test_contract_net_enforcement_matches_the_table(
    steps: list[tuple[tuple[str, str], P]],
) -> None:
    """Random acts among an initiator and two bidders: each side follows its own table."""

    async def scenario() -> None:
        router = Router(node_id="n1")
        inboxes = {name: Recorder() for name in ("i", "p1", "p2")}
        for name, inbox in inboxes.items():
            router.register(name, inbox)
        roles: dict[str, str] = {}
        initiator: str | None = None
        for (sender, receiver), act in steps:
            inbox = inboxes[receiver]
            before = len(inbox.messages)
            await router.send(
                Message(act, sender, receiver, protocol="fipa-contract-net", conversation_id="c")
            )
            expected = None
            if initiator is None or sender == initiator:
                expected = CONTRACT_NET.next_state(roles.get(receiver, "start"), act, True)
                participant = receiver
            elif receiver == initiator:
                expected = CONTRACT_NET.next_state(roles.get(sender, "start"), act, False)
                participant = sender
            delivered = [m for m in inbox.messages[before:] if m.performative is act]
            assert bool(delivered) == (expected is not None), (roles, sender, receiver, act)
            if expected is not None:
                roles[participant] = expected
                initiator = initiator or sender
        conversation = router.conversation("c")
        assert (conversation.roles if conversation else {}) == roles
        await router.close()

    asyncio.run(scenario())
