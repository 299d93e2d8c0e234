"""Agents of one node: the record, the lifecycle, the manager and the host API.

See docs/agents.md for the states, the transitions and the restart policy.
"""

from __future__ import annotations

from caxton.agents.lifecycle import OPERATIONS, TRANSITIONS, check_operation
from caxton.agents.manager import AgentManager
from caxton.agents.model import (
    Agent,
    AgentCounters,
    AgentState,
    RestartPolicy,
    validate_limits,
    validate_name,
)
from caxton.agents.runtime import AgentRuntime

__all__ = [
    "OPERATIONS",
    "TRANSITIONS",
    "Agent",
    "AgentCounters",
    "AgentManager",
    "AgentRuntime",
    "AgentState",
    "RestartPolicy",
    "check_operation",
    "validate_limits",
    "validate_name",
]
