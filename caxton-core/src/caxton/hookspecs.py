"""Hook specifications: the cross-cutting extension points of a Caxton node.

Hooks are synchronous. Every installed (and not blocked) hook plugin takes part.
Async work belongs on driver methods, which core awaits. Each hook below is documented
in docs/plugins/hooks.md with its signature, return protocol and an example; a test
fails when one is missing there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from caxton import hookspec

if TYPE_CHECKING:
    import click
    from aiohttp import web

    from caxton.agents import Agent
    from caxton.config import ConfigSection
    from caxton.drivers import (
        ClusterView,
        HostFunction,
        Member,
        NodeLoad,
        PartitionDecision,
        PlacementRequest,
    )
    from caxton.messaging import Message
    from caxton.node import Node


# -------------------------------------------------------------------------
# Bootstrap: configuration and the command line
# -------------------------------------------------------------------------


@hookspec
def caxton_config_sections() -> Sequence[ConfigSection] | None:
    """Declare the config sections this plugin owns.

    Return a sequence of :class:`caxton.config.ConfigSection`; each is validated when
    the configuration loads, so a wrong type or unknown key in the plugin's own section
    is reported like any core key. Called once per configuration load.
    """


@hookspec(historic=True)
def caxton_configure(config: Any) -> None:
    """The configuration is loaded and validated.

    ``config`` is the effective :class:`caxton.config.Config`. Historic: a plugin
    registered later still receives the call. Return value ignored.
    """


@hookspec
def caxton_cli_commands(cli: click.Group) -> None:
    """Add commands to the ``caxton`` command line: ``cli.add_command(my_command)``.

    Called once when the CLI starts, for installed plugins. Return value ignored.
    """


# -------------------------------------------------------------------------
# Node lifecycle
# -------------------------------------------------------------------------


@hookspec
def caxton_node_starting(node: Node) -> None:
    """The node's drivers are loaded but nothing is listening yet."""


@hookspec
def caxton_node_started(node: Node) -> None:
    """The node is serving: store open, API listening, cluster joined where asked."""


@hookspec
def caxton_node_stopping(node: Node) -> None:
    """Shutdown began (signal or API); agents are still running."""


@hookspec
def caxton_node_stopped(node: Node) -> None:
    """Everything is closed. Last hook a node calls."""


@hookspec
def caxton_api_routes(node: Node) -> Sequence[tuple[str, web.Application]] | None:
    """Mount REST routes: return ``[(prefix, sub_app), ...]``.

    Each ``aiohttp.web.Application`` is mounted with ``app.add_subapp(prefix, sub_app)``
    (for example ``("/api/v1/plugins/myplugin", sub_app)``). Called once when the API
    server is built.
    """


# -------------------------------------------------------------------------
# Agents
# -------------------------------------------------------------------------


@hookspec
def caxton_agent_deployed(node: Node, agent: Agent) -> None:
    """An agent was deployed on this node (its module compiled, its record stored)."""


@hookspec
def caxton_agent_state_changed(node: Node, agent: Agent, old: str, new: str) -> None:
    """An agent moved from state ``old`` to ``new`` (see docs/agents.md for states)."""


@hookspec
def caxton_agent_crashed(node: Node, agent: Agent, reason: str, error: str) -> None:
    """An agent's delivery failed: ``reason`` is ``fuel``, ``timeout``, ``memory``,
    ``trap`` or ``abi``; ``error`` is the full message. The restart policy runs next."""


@hookspec
def caxton_agent_removed(node: Node, agent: Agent) -> None:
    """An agent was removed from this node."""


@hookspec
def caxton_agent_host_functions(node: Node) -> Sequence[HostFunction] | None:
    """Offer extra host imports to agents: return a sequence of :class:`HostFunction`.

    Called once per node start; the functions are linked into every instance. Names in
    the ``caxton`` and ``env`` modules are reserved for the agent ABI.
    """


# -------------------------------------------------------------------------
# Messages
# -------------------------------------------------------------------------


@hookspec
def caxton_message_observed(node: Node, message: Message, event: str) -> None:
    """A message passed an observation point: ``event`` is ``sent``, ``delivered``,
    ``dead-lettered`` or ``expired``.

    Observation only: the message must not be changed. Called only when at least one
    plugin implements it, so observing costs nothing otherwise.
    """


# -------------------------------------------------------------------------
# Cluster membership
# -------------------------------------------------------------------------


@hookspec
def caxton_member_joined(node: Node, member: Member) -> None:
    """A member became alive (a new node, or a failed one that came back)."""


@hookspec
def caxton_member_suspect(node: Node, member: Member) -> None:
    """A member is suspected of failure and has until the suspicion timeout to refute."""


@hookspec
def caxton_member_failed(node: Node, member: Member) -> None:
    """A member was declared failed; its agents are candidates for failover."""


@hookspec
def caxton_member_left(node: Node, member: Member) -> None:
    """A member left gracefully (announced); not a failure."""


# -------------------------------------------------------------------------
# Placement and partitions
# -------------------------------------------------------------------------


@hookspec
def caxton_placement_filter(
    request: PlacementRequest, candidates: Sequence[NodeLoad]
) -> Sequence[str] | None:
    """Exclude nodes from placing ``request``: return node ids to drop, or None.

    Every implementation is called; the union of the returned ids is removed before the
    placement strategy ranks the rest.
    """


@hookspec
def caxton_placement_score(request: PlacementRequest, candidate: NodeLoad) -> float | None:
    """Score one candidate (higher is better); None abstains.

    The scores of all plugins are summed and used to re-rank the strategy's ranking
    (a stable sort, so the strategy's order breaks ties).
    """


@hookspec(firstresult=True)
def caxton_partition_decision(node: Node, view: ClusterView) -> PartitionDecision | None:
    """Decide this node's partition mode for ``view``.

    Stops at first non-None result. None means "no opinion": the next plugin is asked,
    and finally core's trylast implementation asks the configured partition policy
    driver (``partition.strategy``), so a plugin can override it for any view.
    """
