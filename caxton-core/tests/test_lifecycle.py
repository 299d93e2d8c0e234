"""The lifecycle tables, their wording, and docs/agents.md agreeing with them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from caxton.agents import OPERATIONS, TRANSITIONS, Agent, AgentState, check_operation
from caxton.agents.lifecycle import check_transition
from caxton.agents.model import RestartPolicy, capabilities_from_mapping, validate_limits
from caxton.drivers.sandbox import ResourceLimits, WasiCapabilities
from caxton.errors import InvalidTransition, ValidationError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agents.md"


def agent_in(state: AgentState) -> Agent:
    return Agent(id="id", name="worker", module_sha256="sha", limits=ResourceLimits(), state=state)


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("state", list(AgentState))
def test_every_operation_in_every_state(operation: str, state: AgentState) -> None:
    agent = agent_in(state)
    if state in OPERATIONS[operation]:
        check_operation(agent, operation)
        return
    with pytest.raises(InvalidTransition) as info:
        check_operation(agent, operation)
    text = str(info.value)
    assert text.startswith(f"cannot {operation} agent 'worker': it is {state.value} (")
    assert info.value.http_status == 409


def test_hints_say_what_to_do() -> None:
    with pytest.raises(InvalidTransition, match="resume it instead"):
        check_operation(agent_in(AgentState.SUSPENDED), "start")
    with pytest.raises(InvalidTransition, match="allowed only when the agent is running"):
        check_operation(agent_in(AgentState.STOPPED), "suspend")


def test_state_moves_outside_the_table_are_refused() -> None:
    check_transition(agent_in(AgentState.RUNNING), AgentState.SUSPENDED)
    with pytest.raises(InvalidTransition, match="cannot move from stopped to suspended"):
        check_transition(agent_in(AgentState.STOPPED), AgentState.SUSPENDED)
    assert all(old in AgentState and new in AgentState for old, new in TRANSITIONS)


def test_every_operation_target_is_reachable() -> None:
    reachable = {new for _, new in TRANSITIONS}
    assert set(AgentState) - reachable == {AgentState.LOADED}  # only deploy creates it


def test_docs_table_matches_the_operations() -> None:
    text = DOCS.read_text()
    table = text.split("<!-- operations-table")[1].split("<!-- end operations-table")[0]
    documented: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in OPERATIONS:
            states = (
                {s.value for s in AgentState}
                if cells[1] == "any state"
                else set(re.split(r",\s*", cells[1]))
            )
            documented[cells[0]] = states
    assert documented == {op: {s.value for s in states} for op, states in OPERATIONS.items()}


def test_docs_list_every_state() -> None:
    text = DOCS.read_text()
    for state in AgentState:
        assert f"| `{state.value}` |" in text


def test_restart_backoff_is_exponential_and_capped() -> None:
    policy = RestartPolicy(backoff=0.1, max_backoff=1.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    with pytest.raises(ValidationError, match="restart policy must be one of"):
        RestartPolicy(policy="always")


def test_limits_merge_over_defaults() -> None:
    default = ResourceLimits(max_fuel=10)
    ceiling = ResourceLimits(max_fuel=100)
    merged = validate_limits({"max_fuel": 50}, default=default, ceiling=ceiling)
    assert merged.max_fuel == 50
    assert merged.max_memory_bytes == default.max_memory_bytes
    with pytest.raises(ValidationError, match="must be an integer"):
        validate_limits({"max_fuel": True}, default=default, ceiling=ceiling)
    with pytest.raises(ValidationError, match="limits must be an object"):
        validate_limits([1, 2], default=default, ceiling=ceiling)  # type: ignore[arg-type]


def test_capabilities_from_json() -> None:
    caps = capabilities_from_mapping({"enabled": True, "env": {"A": 1}, "args": ["x"]})
    assert caps == WasiCapabilities(enabled=True, env={"A": "1"}, args=("x",))
    with pytest.raises(ValidationError, match="unknown capability 'network'"):
        capabilities_from_mapping({"network": True})
    with pytest.raises(ValidationError, match="enabled must be true or false"):
        capabilities_from_mapping({"enabled": "yes"})
