"""Read-only views of every node, gathered by the node an operator asks (the console).

Each view is what one node knows: its routing-latency histograms and message totals
(``latency``), its dead letters (``dead-letters``), the conversations its router saw
with their first messages (``conversations``, ``conversation``). :func:`gather` asks
every reachable member for a view over the cluster operation ``view``
(:mod:`caxton.cluster.operations`, sealed) and answers it for this node itself; a member
that does not answer in time is listed under ``failed``. The REST routes that use it
(``GET /api/v1/cluster/latency``, ``?scope=cluster`` of the dead letters and the
conversations) have checked the caller's permission; the views change nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from caxton.errors import CaxtonError, ServiceUnavailable, ValidationError

if TYPE_CHECKING:
    from caxton.node import Node
    from caxton.samples import Samples

__all__ = ["VIEWS", "gather", "local_view", "run"]

log = logging.getLogger("caxton.cluster")

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


async def run(node: Node, body: Mapping[str, Any]) -> Any:
    """The ``view`` op of a peer (body ``{view, args}``), answered for this node."""
    view_args = body.get("args") or {}
    if body.get("view") not in VIEWS or not isinstance(view_args, Mapping):
        raise ValidationError("malformed view request")
    return await local_view(node, str(body["view"]), view_args)


async def gather(
    node: Node, name: str, args: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """View ``name`` of this node and of every reachable member: ``(answers, failed)``,
    both by node id (through :meth:`ClusterOperations.fan_out`, as the other
    cluster-wide reports)."""
    args = dict(args or {})
    if name not in VIEWS:
        raise ValidationError(f"unknown view {name!r}")
    cluster = node.cluster
    if cluster is None:
        return {node.node_id: await local_view(node, name, args)}, {}
    replies = await cluster.operations.fan_out("view", {"view": name, "args": args}, VIEW_TIMEOUT)
    answers: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for node_id, reply in replies.items():
        if isinstance(reply, CaxtonError):
            failed[node_id] = str(reply)
        else:
            answers[node_id] = reply
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
