"""Ask every reachable node (or the ones named) for one diagnostic report.

The node the operator reaches runs its own report and sends the sealed ``diag`` cluster
operation (:mod:`caxton.cluster.operations`) to the others at once, so every command
works through any node. A node that does not cluster answers alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from caxton.cluster.placement import RemoteError
from caxton.diagnostics.local import run
from caxton.errors import CaxtonError, NotFound, TransportError

if TYPE_CHECKING:
    from caxton.node import Node

__all__ = ["DEFAULT_TIMEOUT", "check_member", "gather"]

#: Seconds a node may take to answer a report (a profile adds its duration).
DEFAULT_TIMEOUT = 10.0


def check_member(node: Node, node_id: str) -> None:
    """:class:`~caxton.errors.NotFound` unless ``node_id`` is this node or a member it
    knows (alive or not)."""
    if node_id == node.node_id:
        return
    cluster = node.cluster
    if cluster is None:
        raise NotFound(f"No member named {node_id!r}; node {node.node_id} does not cluster")
    if all(m.node_id != node_id for m in cluster.membership.members()):
        raise NotFound(f"No member named {node_id!r} in the cluster")


async def gather(
    node: Node,
    report: str,
    arguments: dict[str, Any] | None = None,
    *,
    nodes: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """``{"nodes": [each node's report], "unreachable": [{"node_id", "error"}]}``.

    ``nodes`` limits the question to those members; a member named there that this
    node does not know is :class:`~caxton.errors.NotFound` (404), and when one node is
    named its error is raised rather than listed.
    """
    body = {"report": report, **(arguments or {})}
    for node_id in nodes or ():
        check_member(node, node_id)
    cluster = node.cluster
    if cluster is None:
        return {"nodes": [await run(node, body)], "unreachable": []}
    answers = await cluster.operations.fan_out("diag", body, timeout, nodes)
    found, unreachable = [], []
    for node_id, answer in answers.items():
        if isinstance(answer, CaxtonError):
            if nodes is not None and len(nodes) == 1:
                # the one node asked about: its error is the answer
                if isinstance(answer, TransportError):
                    raise RemoteError(502, "Bad gateway", f"node '{node_id}': {answer}")
                raise answer
            unreachable.append({"node_id": node_id, "error": str(answer)})
        else:
            found.append(answer)
    found.sort(key=lambda a: str(a.get("node_id")))
    return {"nodes": found, "unreachable": unreachable}
