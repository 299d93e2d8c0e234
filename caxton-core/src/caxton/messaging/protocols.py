"""FIPA interaction protocols as per-participant state machines.

A conversation following a protocol has one *initiator* (the sender of its first
message) and one participant (``fipa-request``, ``fipa-query``) or several
(``fipa-contract-net``). Each participant's side of the conversation moves through the
states below; a message whose performative the current state does not allow is
*out of protocol*: the router answers it with ``not-understood`` instead of delivering it.

``fipa-request`` (and ``fipa-query``, which starts with ``query-if``/``query-ref``)::

    start --request--> requested --agree--> agreed --inform--> done
                       requested --refuse--> refused       \\--failure--> failed
                       requested --inform/failure--> done/failed (agree is optional)
    requested/agreed --cancel--> cancelling --inform--> cancelled, --failure--> failed

``fipa-contract-net``, for each participant::

    start --cfp--> cfp --propose--> proposed --accept-proposal--> accepted --inform--> done
                   cfp --refuse--> refused      proposed --reject-proposal--> rejected
                   cfp --reject-proposal--> rejected          accepted --failure--> failed
    cfp/proposed/accepted --cancel--> cancelling --inform--> cancelled, --failure--> failed

``not-understood`` from either side ends any started, unfinished exchange.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from caxton.messaging.performatives import Performative as P

__all__ = [
    "CONTRACT_NET",
    "PROTOCOLS",
    "QUERY",
    "REQUEST",
    "InteractionProtocol",
]

START = "start"
INITIATOR = True
PARTICIPANT = False

Rule = tuple[Iterable[str], Iterable[P], bool, str]


@dataclass(frozen=True)
class InteractionProtocol:
    """One protocol's transition table: ``(state, performative, from_initiator) -> state``."""

    name: str
    transitions: Mapping[tuple[str, P, bool], str]
    terminal: frozenset[str]
    #: Several participants (contract-net) or exactly one (request, query).
    multi_party: bool = False

    def next_state(self, state: str, performative: P, from_initiator: bool) -> str | None:
        """The state after ``performative``, or None when it is out of protocol."""
        return self.transitions.get((state, performative, from_initiator))

    def allowed(self, state: str, from_initiator: bool) -> list[str]:
        """Performatives that side may send in ``state`` (for error messages)."""
        return sorted(
            performative.value
            for (at, performative, side) in self.transitions
            if at == state and side == from_initiator
        )

    @classmethod
    def build(
        cls, name: str, rules: Iterable[Rule], terminal: Iterable[str], *, multi_party: bool = False
    ) -> InteractionProtocol:
        final = frozenset(terminal)
        table: dict[tuple[str, P, bool], str] = {}
        states = {START}
        for at_states, performatives, side, target in rules:
            for state in at_states:
                states.add(state)
                for performative in performatives:
                    table[(state, performative, side)] = target
        for state in states - final - {START}:
            for side in (INITIATOR, PARTICIPANT):
                table.setdefault((state, P.NOT_UNDERSTOOD, side), "not-understood")
        return cls(name, table, final | {"not-understood"}, multi_party)


_REQUEST_RESULT: list[Rule] = [
    (["requested"], [P.AGREE], PARTICIPANT, "agreed"),
    (["requested"], [P.REFUSE], PARTICIPANT, "refused"),
    (["requested", "agreed"], [P.INFORM], PARTICIPANT, "done"),
    (["requested", "agreed", "cancelling"], [P.FAILURE], PARTICIPANT, "failed"),
    (["requested", "agreed"], [P.CANCEL], INITIATOR, "cancelling"),
    (["cancelling"], [P.INFORM], PARTICIPANT, "cancelled"),
    (["cancelling"], [P.AGREE], PARTICIPANT, "cancelling"),  # crossed the cancel in flight
]
_REQUEST_END = ["refused", "done", "failed", "cancelled"]

REQUEST = InteractionProtocol.build(
    "fipa-request",
    [([START], [P.REQUEST], INITIATOR, "requested"), *_REQUEST_RESULT],
    _REQUEST_END,
)

QUERY = InteractionProtocol.build(
    "fipa-query",
    [([START], [P.QUERY_IF, P.QUERY_REF], INITIATOR, "requested"), *_REQUEST_RESULT],
    _REQUEST_END,
)

CONTRACT_NET = InteractionProtocol.build(
    "fipa-contract-net",
    [
        ([START], [P.CFP], INITIATOR, "cfp"),
        (["cfp"], [P.PROPOSE], PARTICIPANT, "proposed"),
        (["cfp"], [P.REFUSE], PARTICIPANT, "refused"),
        (["proposed"], [P.ACCEPT_PROPOSAL], INITIATOR, "accepted"),
        (["cfp", "proposed"], [P.REJECT_PROPOSAL], INITIATOR, "rejected"),
        (["accepted"], [P.INFORM], PARTICIPANT, "done"),
        (["accepted", "cancelling"], [P.FAILURE], PARTICIPANT, "failed"),
        (["cfp", "proposed", "accepted"], [P.CANCEL], INITIATOR, "cancelling"),
        (["cancelling"], [P.INFORM], PARTICIPANT, "cancelled"),
    ],
    ["refused", "rejected", "done", "failed", "cancelled"],
    multi_party=True,
)

#: The protocols the router validates, by the name messages carry in ``protocol``.
PROTOCOLS: dict[str, InteractionProtocol] = {p.name: p for p in (REQUEST, QUERY, CONTRACT_NET)}
