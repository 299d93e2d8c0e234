"""FIPA-ACL performatives and Caxton's delivery priority classes.

Both parse leniently from what people and agents actually write: ``request``,
``REQUEST``, ``Request``, ``accept-proposal``, ``ACCEPT_PROPOSAL``, ``AcceptProposal`` and
``accept_proposal`` are all :attr:`Performative.ACCEPT_PROPOSAL`; ``critical``, ``HIGH``
and ``2`` are priorities. Anything else is a :class:`~caxton.errors.ValidationError`
naming the allowed values.
"""

from __future__ import annotations

from enum import Enum, IntEnum

from caxton.errors import ValidationError

__all__ = ["Performative", "Priority"]


def _compact(value: str) -> str:
    """One spelling per name: no case, no ``-``, ``_`` or spaces."""
    return value.replace("-", "").replace("_", "").replace(" ", "").lower()


class Performative(str, Enum):
    """The FIPA-ACL communicative acts (FIPA SC00037J), valued by their wire names."""

    ACCEPT_PROPOSAL = "accept-proposal"
    AGREE = "agree"
    CANCEL = "cancel"
    CFP = "cfp"
    CONFIRM = "confirm"
    DISCONFIRM = "disconfirm"
    FAILURE = "failure"
    INFORM = "inform"
    INFORM_IF = "inform-if"
    INFORM_REF = "inform-ref"
    NOT_UNDERSTOOD = "not-understood"
    PROPAGATE = "propagate"
    PROPOSE = "propose"
    PROXY = "proxy"
    QUERY_IF = "query-if"
    QUERY_REF = "query-ref"
    REFUSE = "refuse"
    REJECT_PROPOSAL = "reject-proposal"
    REQUEST = "request"
    REQUEST_WHEN = "request-when"
    REQUEST_WHENEVER = "request-whenever"
    SUBSCRIBE = "subscribe"
    #: The long name of ``cfp`` (an alias: ``Performative.CALL_FOR_PROPOSAL is CFP``).
    CALL_FOR_PROPOSAL = "cfp"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Performative) -> Performative:
        """The performative ``value`` names, in any of the accepted spellings."""
        if isinstance(value, Performative):
            return value
        if isinstance(value, str):
            found = _PERFORMATIVES.get(value)
            if found is None:
                found = _PERFORMATIVES.get(_compact(value))
            if found is not None:
                return found
        allowed = ", ".join(sorted(p.value for p in cls))
        raise ValidationError(f"Unknown performative {value!r}: expected one of {allowed}")

    @classmethod
    def _missing_(cls, value: object) -> Performative | None:
        if isinstance(value, str):
            return _PERFORMATIVES.get(_compact(value))
        return None


_PERFORMATIVES: dict[str, Performative] = {p.value: p for p in Performative}
_PERFORMATIVES.update({_compact(p.value): p for p in Performative})
_PERFORMATIVES["callforproposal"] = Performative.CFP


class Priority(IntEnum):
    """Delivery classes: a lower value is delivered first (``critical`` overtakes)."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        """A priority from its name (any case), its number, or a digit string."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value <= 3:
                return cls(value)
        elif isinstance(value, str):
            text = value.strip()
            if text.isdigit() and 0 <= int(text) <= 3:
                return cls(int(text))
            member = cls.__members__.get(text.upper())
            if member is not None:
                return member
        allowed = ", ".join(f"{p.name.lower()} ({p.value})" for p in cls)
        raise ValidationError(f"Unknown priority {value!r}: expected one of {allowed}")
