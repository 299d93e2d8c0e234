"""The driver on any interpreter: discoverable, and one clear line where wasmer cannot run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WASMER_PROBLEM, make_wasmer_sandbox

from caxton.errors import PluginError
from caxton_sandbox_wasmer import driver

NEEDS_NEWER_PYTHON = (
    "sandbox driver 'wasmer' needs CPython 3.10 or older (wasmer 1.1.0 has no wheels for "
    "Python {version}); run the node with python3.10"
)


def run_python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_the_entry_point_loads_without_importing_wasmer() -> None:
    result = run_python(
        "import importlib.metadata as m, sys\n"
        "(ep,) = m.entry_points(group='caxton.sandbox', name='wasmer')\n"
        "cls = ep.load()\n"
        "print(cls.__module__, cls.__name__, 'wasmer' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["caxton_sandbox_wasmer.driver", "WasmerSandbox", "False"]


def test_an_interpreter_newer_than_wasmer_supports_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "NEWEST_PYTHON", (3, 9))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(PluginError) as error:
        make_wasmer_sandbox(tmp_path)
    assert str(error.value) == NEEDS_NEWER_PYTHON.format(version=version)


@pytest.mark.skipif(
    WASMER_PROBLEM is None, reason="wasmer works on this interpreter: the node would start"
)
def test_selecting_wasmer_where_it_cannot_run_says_so_in_one_line(tmp_path: Path) -> None:
    result = run_python(
        "from caxton.cli.main import main; main()",
        "server",
        "start",
        "--plugin",
        "sandbox=wasmer",
        "--data-dir",
        str(tmp_path / "data"),
        "--bind-addr",
        "127.0.0.1:0",
        "--api-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        cwd=tmp_path,
    )
    output = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert output == [f"Error: {NEEDS_NEWER_PYTHON.format(version=version)}"]
