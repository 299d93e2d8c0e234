"""deploy/systemd/caxton.service: systemd accepts it, and its sandbox scores as documented.

``systemd-analyze`` (Debian package ``systemd``) checks the unit offline; no running
systemd is needed. CI installs it; elsewhere the tests skip naming it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import ROOT, caxton_command

UNIT = ROOT / "deploy" / "systemd" / "caxton.service"
#: docs/deployment.md promises at most this exposure level ("OK" in systemd's words).
MAX_EXPOSURE = 2.5


@pytest.fixture
def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze is missing: apt-get install systemd"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The shipped unit, with ExecStart pointing at this environment's caxton script
    (``verify`` checks that the command exists and is executable)."""
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/caxton --config " in text
    local = tmp_path / "caxton.service"
    local.write_text(text.replace("/usr/local/bin/caxton", caxton_command()))
    return local


def test_systemd_verify_accepts_the_unit_without_a_word(analyze: str, unit: Path) -> None:
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    assert result.stdout.strip() == ""


def test_the_unit_is_sandboxed(analyze: str, unit: Path) -> None:
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for caxton\.service: ([\d.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_unit_waits_for_ready_and_keeps_the_jit_working() -> None:
    """Type=notify is what makes systemd wait for READY=1; MemoryDenyWriteExecute would
    stop wasmtime from compiling agents, so it must stay off."""
    settings = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify"
    assert "WatchdogSec" in settings
    assert "MemoryDenyWriteExecute" not in settings
    assert settings["StateDirectory"] == "caxton"
