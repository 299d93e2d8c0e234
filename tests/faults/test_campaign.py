"""The short fault campaign, in CI: five node processes in network namespaces over tcp,
a dozen seeded faults of every kind (about three minutes), and the checker's verdict.

The guarantees of issue 12 are being built; a property is asserted here once a
campaign of at least 30 faults showed no anomaly for it on main (:data:`ASSERTED`).
Every other property is still checked and reported, in the output and as an expected
failure naming its anomalies ("not yet guaranteed", docs/reliability.md), so a
regression of an asserted property fails CI and nothing is hidden. Needs root, ``ip`` and
``nft``: skipped naming what is missing, except with ``CI`` set, where that
fails. ``CAXTON_FAULTS_SEED`` runs it with another seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import campaign
import pytest
from checker import NAMES, check, summary
from cluster_support import netns_missing
from nemesis import KINDS, Timing

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: The properties that hold on main: a campaign of at least 30 faults showed 0
#: anomalies for each (docs/reliability.md has the runs). Move one here only then.
#: lost-state and two-copies held over tcp (30 faults) but not over quic (a 2|3 split
#: with the owner and one holder on the minority side): not yet.
ASSERTED: frozenset[str] = frozenset({"lost-messages", "duplicates", "minority-writes"})

SEED = int(os.environ.get("CAXTON_FAULTS_SEED", "20261207"))
FAULTS = 12
TIMING = Timing(hold=(3.5, 7.0), settle=(1.5, 3.0))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = netns_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the fault campaign needs {missing}; CI must provide it")
        pytest.skip(f"needs {missing}")
    workdir = tmp_path_factory.mktemp("faults")
    options = campaign.Options(faults=FAULTS, transport="tcp", seed=SEED, timing=TIMING)
    history = campaign.run(options, workdir, log=lambda text: print(text, flush=True))
    history.save(workdir / "history.json")
    result = check(history)
    print(summary(result))
    if os.environ.get("NOX_REPORT_DIR"):  # kept beside the JUnit reports (CI artifacts)
        report_dir = Path(os.environ["NOX_REPORT_DIR"])
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "faults-report.json").write_text(json.dumps(result, indent=2))
    print(f"history: {workdir / 'history.json'}; reproduce: nox -s faults -- --faults {FAULTS} "
          f"--transport tcp --seed {SEED} --hold 3.5 7")  # fmt: skip
    return result


def test_the_campaign_ran_every_kind_of_fault_under_load(report: dict[str, Any]) -> None:
    assert report["faults"] == FAULTS
    assert set(report["fault_kinds"]) == set(KINDS)
    for kind in ("count", "record", "send"):
        assert report["operations"].get(f"{kind}:ok", 0) >= 100, report["operations"]


@pytest.mark.parametrize("name", NAMES)
def test_property(report: dict[str, Any], name: str) -> None:
    result = report["properties"][name]
    examples = "; ".join(
        f"t={e['at']:.1f}s {e['what']} [{e['fault']}]" for e in result["examples"][:3]
    )
    if name in ASSERTED:
        assert result["holds"], f"{name}: {result['anomalies']} anomalies: {examples}"
    elif not result["holds"]:
        pytest.xfail(
            f"not yet guaranteed (issue 12): {name}: {result['anomalies']} anomalies: {examples}"
        )
