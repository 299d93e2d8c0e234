"""Read-only views of every node, gathered by the node an operator asks (the console).

Each view is what one node knows: its routing-latency histograms and message totals
(``latency``), its dead letters (``dead-letters``), the conversations its router saw
with their first messages (``conversations``, ``conversation``). :func:`gather` asks
every reachable member for a view over the CONTROL op ``view`` (sealed, see
:mod:`caxton.cluster.trust`) and answers it for this node itself; a member that does not
answer in time is listed under ``failed``. The REST routes that use it
(``GET /api/v1/cluster/latency``, ``?scope=cluster`` of the dead letters and the
conversations) have checked the caller's permission; the views change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from caxton.cluster import wire
from caxton.cluster.placement import error_answer
from caxton.errors import CaxtonError, ServiceUnavailable, TransportError, ValidationError

if TYPE_CHECKING:
    from caxton.drivers.transport import Frame
    from caxton.node import Node
    from caxton.samples import Samples

__all__ = ["OPS", "VIEWS", "gather", "local_view", "on_control"]

log = logging.getLogger("caxton.cluster")

#: The control ops this module answers.
OPS = frozenset({"view"})
#: Seconds each node has to answer.
VIEW_TIMEOUT = 3.0
#: Most conversations one node lists.
MAX_CONVERSATIONS = 1000


def _histogram(node: Node, samples: Samples) -> dict[str, Any]:
    """Cumulative buckets of ``samples`` at the node's ``observability.histogram_buckets``
    (the bounds /metrics uses, so both read the same counts)."""
    bounds = [float(b) for b in node.config["observability"]["histogram_buckets"]]
    snapshot = samples.histogram(bounds)
    buckets = [[None if b == float("inf") else b, count] for b, count in snapshot.buckets]
    return {"buckets": buckets, "count": snapshot.count, "sum": snapshot.sum}


def _latency(node: Node) -> dict[str, Any]:
    router = node.router
    if router is None:
        raise ServiceUnavailable(f"node {node.node_id}: the router is not running yet")
    totals = router.queue_stats(agents=False)["totals"]
    return {
        "at": time.time(),
        "routing": _histogram(node, router.latency),
        "remote_routing": _histogram(node, router.forward_latency),
        "messages": int(totals.get("delivered", 0)) + int(totals.get("forwarded", 0)),
    }


def _conversations(node: Node, args: Mapping[str, Any]) -> list[dict[str, Any]]:
    router = node.router
    if router is None:
        return []
    participant = args.get("participant")
    found = [
        c.to_dict()
        for c in router.conversations()
        if participant is None or participant in c.participants
    ]
    found.sort(key=lambda c: c["updated_at"], reverse=True)
    return found[: int(args.get("limit") or MAX_CONVERSATIONS)]


def _conversation(node: Node, args: Mapping[str, Any]) -> dict[str, Any] | None:
    router = node.router
    conversation_id = str(args.get("conversation_id"))
    known = router.conversation(conversation_id) if router is not None else None
    if known is None:
        return None
    return {**known.to_dict(), "messages": router.conversation_trail(conversation_id)}


async def local_view(node: Node, name: str, args: Mapping[str, Any]) -> Any:
    """View ``name`` of this node."""
    if name == "latency":
        return _latency(node)
    if name == "dead-letters":
        store = node.store
        return await store.dead_letters(
            int(args.get("limit") or 100),
            message_id=args.get("message_id"),
            receiver=args.get("receiver"),
        )
    if name == "conversations":
        return _conversations(node, args)
    if name == "conversation":
        return _conversation(node, args)
    raise ValidationError(f"unknown view {name!r}")


#: The views, for the docs and the checks.
VIEWS = ("latency", "dead-letters", "conversations", "conversation")


async def on_control(node: Node, frame: Frame, args: Sequence[Any]) -> bytes:
    """Answer the ``view`` op of a peer: ``["ok", view]`` or an error answer."""
    try:
        _, body = node.cluster.failover.trust.open("view", frame.sender, args[0] if args else None)
        if not isinstance(body, Mapping) or body.get("view") not in VIEWS:
            raise ValidationError("malformed view request")
        view_args = body.get("args") or {}
        if not isinstance(view_args, Mapping):
            raise ValidationError("malformed view request: bad args")
        return wire.pack(["ok", await local_view(node, str(body["view"]), view_args)])
    except CaxtonError as exc:
        log.info("refused a view request from %s: %s", frame.sender, exc)
        return wire.pack(error_answer(exc))


async def gather(
    node: Node, name: str, args: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """View ``name`` of this node and of every reachable member: ``(answers, failed)``,
    both by node id."""
    args = dict(args or {})
    answers: dict[str, Any] = {node.node_id: await local_view(node, name, args)}
    cluster = node.cluster
    if cluster is None:
        return answers, {}
    peers = cluster._peers()
    sealed = cluster.failover.trust.seal({"view": name, "args": args})

    async def ask(address: Any) -> Any:
        try:
            return await cluster._control(address, VIEW_TIMEOUT, "view", sealed)
        except (TransportError, asyncio.TimeoutError) as exc:
            return ["error", 502, "Unreachable", f"did not answer: {exc}", None]

    failed: dict[str, str] = {}
    replies = await asyncio.gather(*(ask(m.address) for m in peers))
    for member, reply in zip(peers, replies, strict=True):
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == "ok":
            answers[member.node_id] = reply[1]
        elif isinstance(reply, list) and len(reply) == 5 and reply[0] == "error":
            failed[member.node_id] = str(reply[3])
        else:
            failed[member.node_id] = "a malformed answer"
    return answers, failed


def merge_conversation(answers: Mapping[str, Any]) -> dict[str, Any] | None:
    """One conversation as several nodes saw it (node id -> its view, or None): the
    first node's record, every participant, and each message once (by message id and
    receiver), oldest first, with the node that saw it first."""
    known = [(node_id, c) for node_id, c in answers.items() if c]
    if not known:
        return None
    merged = dict(known[0][1])
    participants: set[str] = set()
    messages: dict[tuple[str, str], dict[str, Any]] = {}
    for node_id, conversation in known:
        participants.update(conversation.get("participants") or ())
        merged["message_count"] = max(merged["message_count"], conversation["message_count"])
        for message in conversation.get("messages") or ():
            key = (message["message_id"], message["receiver"])
            messages.setdefault(key, {**message, "node_id": node_id})
    merged["participants"] = sorted(participants)
    merged["messages"] = sorted(messages.values(), key=lambda m: m["at"])
    return merged
