"""The key membership properties over thousands of seeds, and every kept failing seed.

Each property (:data:`caxton.testing.membership.SCENARIOS`) runs on a range of seeds.
A seed that breaks a property is written to ``swim_regressions/`` as a JSON file and
the test fails naming it; once the bug is fixed the file stays and is replayed by
:func:`test_regression_replays` forever.

``CAXTON_SWIM_SEED_BASE`` moves the window of seeds (a nightly job can explore new
ones); ``CAXTON_SWIM_SEED_SCALE`` multiplies how many run (default 1: about 2,200 seeds
in under half a minute).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caxton.drivers.membership import MemberStatus
from caxton.membership.settings import SwimSettings
from caxton.testing.membership import SCENARIOS, SimCluster

REGRESSIONS = Path(__file__).parent / "swim_regressions"
BASE = int(os.environ.get("CAXTON_SWIM_SEED_BASE", "0"))
SCALE = float(os.environ.get("CAXTON_SWIM_SEED_SCALE", "1"))
#: Seeds per property in one run (the costlier scenarios get fewer).
SEEDS = {"kill": 500, "loss": 200, "pause": 400, "partition": 200, "leave": 500, "restart": 400}


def keep_regression(case: dict[str, Any]) -> Path:
    REGRESSIONS.mkdir(exist_ok=True)
    name = f"{case['scenario']}-seed{case['seed']}"
    params = case.get("params") or {}
    if "nodes" in params:
        name += f"-nodes{params['nodes']}"
    if "settings" in params:
        name += "-" + "-".join(f"{k}{v}" for k, v in sorted(params["settings"].items()))
    path = REGRESSIONS / f"{name}.json"
    path.write_text(json.dumps(case, indent=2) + "\n")
    return path


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_property_holds_across_seeds(name: str) -> None:
    count = max(1, int(SEEDS[name] * SCALE))
    kept = []
    for seed in range(BASE, BASE + count):
        result = SCENARIOS[name](seed)
        if result.failure is not None:
            case = {"scenario": name, "seed": seed, "params": {}, "failure": result.failure}
            kept.append(f"{keep_regression(case).name}: {result.failure}")
    assert not kept, "failing seeds kept as regressions:\n" + "\n".join(kept)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    scenario=st.sampled_from(["kill", "leave", "restart"]),
    nodes=st.integers(3, 12),
    probe_interval=st.sampled_from([0.2, 0.5, 1.0]),
    suspicion_multiplier=st.integers(2, 6),
    gossip_interval=st.sampled_from([0.1, 0.2, 0.5]),
)
def test_properties_hold_for_any_size_and_tuning(
    seed: int,
    scenario: str,
    nodes: int,
    probe_interval: float,
    suspicion_multiplier: int,
    gossip_interval: float,
) -> None:
    tuning = {
        "probe_interval": probe_interval,
        "probe_timeout": probe_interval / 2,
        "suspicion_multiplier": suspicion_multiplier,
        "gossip_interval": gossip_interval,
    }
    result = SCENARIOS[scenario](seed, nodes, SwimSettings(**tuning))
    if result.failure is not None:
        params = {"nodes": nodes, "settings": tuning}
        keep_regression(
            {"scenario": scenario, "seed": seed, "params": params, "failure": result.failure}
        )
    assert result.failure is None


# -------------------------------------------------------------------------
# Replaying kept regressions
# -------------------------------------------------------------------------


def _regressions() -> list[Any]:
    return [
        pytest.param(json.loads(path.read_text()), id=path.stem)
        for path in sorted(REGRESSIONS.glob("*.json"))
    ]


def _run_steps(case: dict[str, Any]) -> SimCluster:
    sim = SimCluster(case["seed"])
    for step, *args in case["steps"]:
        if step == "start":
            sim.start_nodes(*args)
        elif step == "run":
            sim.run_for(*args)
        elif step == "loss":
            sim.set_loss(*args)
        elif step == "kill":
            sim.kill(*args)
        elif step == "pause":
            sim.pause(*args)
        elif step == "partition":
            sim.partition(*args)
        elif step == "heal":
            sim.heal()
        elif step == "leave":
            sim.leave(*args)
        elif step == "restart":
            sim.restart(*args)
        else:
            raise AssertionError(f"unknown step {step!r}")
    return sim


def _check(sim: SimCluster, expectation: list[Any]) -> None:
    what, *args = expectation
    failures = sim.events("failed")
    if what == "no_failures":
        assert failures == []
    elif what == "no_failures_except":
        assert [f for f in failures if f[2] not in args] == []
    elif what == "all_see":
        member, status = args
        assert sim.all_see(member, MemberStatus(status))
    elif what == "converged":
        assert sim.converged()
    else:
        raise AssertionError(f"unknown expectation {what!r}")


@pytest.mark.parametrize("case", _regressions())
def test_regression_replays(case: dict[str, Any]) -> None:
    if "steps" in case:
        sim = _run_steps(case)
        for expectation in case["expect"]:
            _check(sim, expectation)
        return
    params = dict(case.get("params") or {})
    if "settings" in params:
        params["settings"] = SwimSettings(**params["settings"])
    result = SCENARIOS[case["scenario"]](case["seed"], **params)
    assert result.failure is None


def test_regressions_are_kept() -> None:
    assert _regressions(), "swim_regressions/ must hold the failing seeds found so far"
