"""deploy/kubernetes: valid against the Kubernetes schemas, and consistent with Caxton.

``kubernetes-validate --strict`` checks every manifest against the API schemas (unknown
fields are errors). The other tests check what the schemas cannot: that the ConfigMap's
config is one ``caxton config validate`` accepts with the environment the StatefulSet
gives it, and that the names the pieces use for each other agree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ROOT, run_caxton

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def resources() -> dict[str, dict[str, Any]]:
    """Every resource of every manifest, by ``kind/name``."""
    found = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def test_every_manifest_passes_kubernetes_validate_strict() -> None:
    validate = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert validate, "kubernetes-validate is not installed (the integration session installs it)"
    result = subprocess.run(
        [validate, "--strict", *map(str, MANIFESTS)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 5, result.stdout


def test_the_pieces_name_each_other() -> None:
    found = resources()
    statefulset = found["StatefulSet/caxton"]
    headless = found["Service/caxton-headless"]
    config = found["ConfigMap/caxton-config"]["data"]["config.toml"]
    assert statefulset["spec"]["serviceName"] == "caxton-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # pods find each other early
    assert 'dns_name = "caxton-headless"' in config
    assert found["PodDisruptionBudget/caxton"]["spec"]["maxUnavailable"] == 1
    pod = statefulset["spec"]["template"]["spec"]
    (node,) = pod["containers"]
    assert node["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert node["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "limits" in container["resources"]
        assert "requests" in container["resources"]


def test_the_configmap_config_is_valid_for_caxton(tmp_path: Path) -> None:
    """``config validate`` on the shipped config, with the StatefulSet's environment and
    real certificates where the init container would have written them."""
    found = resources()
    config = found["ConfigMap/caxton-config"]["data"]["config.toml"]
    certs = tmp_path / "certs"
    for args in (
        ("security", "init-ca", "--output", str(tmp_path / "ca")),
        ("security", "issue-cert", "--ca", str(tmp_path / "ca"), "--node-id", "caxton-0",
         "--host", "10.0.0.7", "--output", str(certs)),
    ):  # fmt: skip
        made = run_caxton(*args)
        assert made.returncode == 0, made.stderr
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        config.replace("/data/certs", str(certs)).replace('"/data"', f'"{tmp_path / "data"}"')
    )
    (node,) = found["StatefulSet/caxton"]["spec"]["template"]["spec"]["containers"]
    env = {
        "CAXTON_NODE_ID": "caxton-0",
        "CAXTON_COORDINATION_CLUSTER_ADVERTISE_ADDR": "10.0.0.7:7946",
    }
    assert {e["name"] for e in node["env"]} >= set(env)
    result = run_caxton("config", "validate", str(config_file), env=env)
    assert result.returncode == 0, result.stderr
    shown = run_caxton("config", "show", "--config", str(config_file), "--json", env=env)
    assert '"discovery": "dns"' in shown.stdout


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_image_is_the_one_the_containerfile_builds(path: Path) -> None:
    text = path.read_text()
    for line in text.splitlines():
        if line.strip().startswith("image:"):
            assert line.split(":", 1)[1].strip() == "caxton:0.2.0"
