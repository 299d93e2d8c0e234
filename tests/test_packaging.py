"""Every distribution builds as a wheel and installs alone or together.

Wheels are built from this checkout; each scenario installs them into a fresh virtual
environment (dependencies from the package index) and asks ``caxton plugins --json``
what that environment can do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import CORE_DIR, EXAMPLE_PLUGIN_DIR, PLUGIN_DIRS, VirtualEnv

pytestmark = pytest.mark.slow

VERSION = "0.2.0"
CORE_DEFAULTS = {
    ("sandbox", "wasmtime"),
    ("membership", "swim"),
    ("membership", "static"),
    ("placement", "least-loaded"),
    ("placement", "round-robin"),
    ("placement", "local"),
    ("partition_policy", "quorum"),
    ("auth", "api-key"),
}
PLUGIN_DRIVERS = {
    "caxton-transport-quic": ("transport", "quic"),
    "caxton-transport-tcp": ("transport", "tcp"),
    "caxton-sandbox-wasmer": ("sandbox", "wasmer"),
    "caxton-auth-jwt": ("auth", "jwt"),
}
#: wasmer 1.1 has wheels for CPython 3.10 only; elsewhere its driver may be listed broken.
UNUSABLE_HERE = {("sandbox", "wasmer")} if sys.version_info >= (3, 11) else set()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """distribution name -> wheel, for core, the four plugins and the example plugin."""
    out = tmp_path_factory.mktemp("wheels")
    uv = shutil.which("uv")
    for source in [CORE_DIR, *PLUGIN_DIRS, EXAMPLE_PLUGIN_DIR]:
        if uv:
            command = [uv, "build", "--wheel", "--quiet", "--out-dir", str(out), str(source)]
        else:
            command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out)]
            command.append(str(source))
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"building {source.name} failed:\n{result.stderr}"
    built = {path.name.split("-")[0].replace("_", "-"): path for path in out.glob("*.whl")}
    return built


def drivers(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["kind"], r["name"]): r for r in rows if r["kind"] != "hooks"}


def test_every_distribution_builds_a_wheel(wheels: dict[str, Path]) -> None:
    assert set(wheels) == {"caxton-core", *PLUGIN_DRIVERS, "caxton-zone-aware"}
    for name in ["caxton-core", *PLUGIN_DRIVERS]:
        assert f"-{VERSION}-" in wheels[name].name


def test_core_with_quic_only(wheels: dict[str, Path], make_venv: Callable[..., VirtualEnv]) -> None:
    venv = make_venv("core-quic")
    venv.install(wheels["caxton-core"], wheels["caxton-transport-quic"])
    found = drivers(venv.plugins())
    assert set(found) >= CORE_DEFAULTS
    assert {kind for kind, _name in found} == {
        "sandbox", "transport", "membership", "placement", "partition_policy", "auth"
    }  # fmt: skip
    quic = found[("transport", "quic")]
    assert (quic["distribution"], quic["version"]) == ("caxton-transport-quic", VERSION)
    assert ("transport", "tcp") not in found
    broken = {key: row["broken"] for key, row in found.items() if row["broken"]}
    assert not broken, broken

    # A driver that is not installed: the error names what is and what to install.
    probe = venv.run(
        "python", "-c",
        "from caxton.plugins import PluginHost\n"
        "try:\n    PluginHost().driver_class('transport', 'tcp')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)",
    )  # fmt: skip
    assert "DriverNotFound" in probe.stdout, probe.stderr
    assert "installed transport drivers: quic" in probe.stdout
    assert "pip install caxton-transport-tcp" in probe.stdout


def test_everything_at_once(wheels: dict[str, Path], make_venv: Callable[..., VirtualEnv]) -> None:
    venv = make_venv("everything")
    venv.install(*wheels.values())
    rows = venv.plugins()
    found = drivers(rows)
    assert set(found) >= CORE_DEFAULTS
    for dist, key in PLUGIN_DRIVERS.items():
        assert key in found, f"{dist} installed but {key} not listed"
        assert (found[key]["distribution"], found[key]["version"]) == (dist, VERSION)
    broken = {key: row["broken"] for key, row in found.items() if row["broken"]}
    assert set(broken) <= UNUSABLE_HERE, broken
    hooks = {r["name"]: r for r in rows if r["kind"] == "hooks"}
    assert hooks["zone-filter"]["distribution"] == "caxton-zone-aware"
    assert hooks["zone-filter"]["broken"] is None
