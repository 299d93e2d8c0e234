"""Choosing the node for a new agent: plugin filters, the strategy driver, plugin scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from caxton.drivers import NodeLoad, PlacementRequest, PlacementStrategy
from caxton.errors import CaxtonError

if TYPE_CHECKING:
    import pluggy


class NoPlacement(CaxtonError):
    http_status = 503
    error = "No node can host the agent"


def rank_nodes(
    hook: pluggy.HookRelay,
    strategy: PlacementStrategy,
    request: PlacementRequest,
    candidates: Sequence[NodeLoad],
) -> list[NodeLoad]:
    """Candidates best first, as docs/plugins/drivers.md describes.

    ``caxton_placement_filter`` results (node ids) are removed, the strategy ranks the
    rest, then the summed ``caxton_placement_score`` results re-rank them with a stable
    sort, so the strategy's order breaks ties. Raises :class:`NoPlacement` when nothing
    is left, naming why.
    """
    excluded = {
        node_id
        for result in hook.caxton_placement_filter(request=request, candidates=candidates)
        for node_id in result or ()
    }
    remaining = [c for c in candidates if c.node_id not in excluded]
    ranked = strategy.rank(request, remaining) if remaining else []
    if not ranked:
        why = (
            f"target node '{request.target_node}' is not available"
            if request.target_node
            else f"{len(candidates)} candidates, {len(excluded)} excluded by plugins"
        )
        raise NoPlacement(f"no node can host agent '{request.agent_name}': {why}")
    if hook.caxton_placement_score.get_hookimpls():
        scores = {
            c.node_id: sum(
                s for s in hook.caxton_placement_score(request=request, candidate=c) if s
            )
            for c in ranked
        }
        ranked.sort(key=lambda c: -scores[c.node_id])
    return ranked
