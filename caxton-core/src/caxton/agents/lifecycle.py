"""Which lifecycle operation each state allows, and which state moves are legal.

The tables here are the source of docs/agents.md's transition table; a test checks
that the document and these tables agree.
"""

from __future__ import annotations

from collections.abc import Mapping

from caxton.agents.model import Agent, AgentState
from caxton.errors import InvalidTransition

S = AgentState

#: operation -> states it may start from.
OPERATIONS: Mapping[str, frozenset[AgentState]] = {
    "start": frozenset({S.LOADED, S.STOPPED, S.FAILED}),
    "stop": frozenset({S.READY, S.RUNNING, S.SUSPENDED, S.FAILED}),
    "suspend": frozenset({S.RUNNING}),
    "resume": frozenset({S.SUSPENDED}),
    "update": frozenset({S.LOADED, S.READY, S.RUNNING, S.SUSPENDED, S.STOPPED, S.FAILED}),
    "remove": frozenset(AgentState),
}

#: Every legal (old, new) state move.
TRANSITIONS: frozenset[tuple[AgentState, AgentState]] = frozenset(
    {
        (S.LOADED, S.READY),  # instantiated, agent_init ran
        (S.STOPPED, S.READY),
        (S.FAILED, S.READY),
        (S.LOADED, S.FAILED),  # agent_init failed
        (S.STOPPED, S.FAILED),
        (S.FAILED, S.FAILED),
        (S.READY, S.RUNNING),  # registered with the router
        (S.READY, S.FAILED),
        (S.READY, S.STOPPED),
        (S.RUNNING, S.DRAINING),  # update or stop: in-flight conversations finish
        (S.DRAINING, S.RUNNING),  # update done
        (S.DRAINING, S.STOPPED),
        (S.DRAINING, S.FAILED),
        (S.RUNNING, S.SUSPENDED),
        (S.SUSPENDED, S.RUNNING),
        (S.SUSPENDED, S.STOPPED),
        (S.RUNNING, S.STOPPED),  # emergency stop skips draining
        (S.RUNNING, S.FAILED),  # restart policy gave up
        (S.FAILED, S.STOPPED),
    }
)

_HINTS: Mapping[tuple[str, AgentState], str] = {
    ("start", S.RUNNING): "nothing to do; stop it first to restart it",
    ("start", S.SUSPENDED): "resume it instead",
    ("start", S.READY): "it is starting; retry in a moment",
    ("start", S.DRAINING): "it is being updated or stopped; retry when that finishes",
    ("stop", S.LOADED): "it was never started",
    ("stop", S.STOPPED): "nothing to do",
    ("stop", S.DRAINING): "it is already being stopped or updated",
    ("suspend", S.SUSPENDED): "nothing to do; resume it to deliver its messages",
    ("resume", S.RUNNING): "nothing to do",
    ("update", S.DRAINING): "another update or stop is in progress; retry when it finishes",
}


def check_operation(agent: Agent, operation: str) -> None:
    """Raise :class:`InvalidTransition` unless ``operation`` is allowed in the agent's state."""
    allowed = OPERATIONS[operation]
    if agent.state in allowed:
        return
    hint = _HINTS.get((operation, agent.state))
    if hint is None:
        states = ", ".join(sorted(s.value for s in allowed))
        hint = f"{operation} is allowed only when the agent is {states}"
    raise InvalidTransition(
        f"cannot {operation} agent '{agent.name}': it is {agent.state.value} ({hint})"
    )


def check_transition(agent: Agent, new: AgentState) -> None:
    if (agent.state, new) not in TRANSITIONS:
        raise InvalidTransition(
            f"agent '{agent.name}' cannot move from {agent.state.value} to {new.value}"
        )
