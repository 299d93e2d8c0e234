"""FIPA-ACL messaging on one node: the message model and the in-process router.

Agents, external clients and the cluster layer all use these names::

    from caxton.messaging import Message, Performative, Priority, Router, DurableOutbox
"""

from __future__ import annotations

from caxton.messaging.clients import ContractNetResult, Selector
from caxton.messaging.conversations import Conversation
from caxton.messaging.message import Message, new_message_id
from caxton.messaging.performatives import Performative, Priority
from caxton.messaging.protocols import PROTOCOLS, InteractionProtocol
from caxton.messaging.router import (
    GUARANTEES,
    DeadLetter,
    Deliver,
    DurableOutbox,
    Observer,
    RemoteRoute,
    Resolver,
    Router,
)

__all__ = [
    "GUARANTEES",
    "PROTOCOLS",
    "ContractNetResult",
    "Conversation",
    "DeadLetter",
    "Deliver",
    "DurableOutbox",
    "InteractionProtocol",
    "Message",
    "Observer",
    "Performative",
    "Priority",
    "RemoteRoute",
    "Resolver",
    "Router",
    "Selector",
    "new_message_id",
]
