"""Helpers for the cross-package tests: fresh virtual environments and the CLI.

A plain module, not conftest.py: several conftest modules meet in one pytest run, and
importing names from "conftest" would depend on which one Python saw first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_DIR = ROOT / "caxton-core"
PLUGIN_DIRS = sorted((ROOT / "plugins").iterdir())
EXAMPLE_PLUGIN_DIR = ROOT / "examples" / "caxton-zone-aware"
#: Installing into fresh environments takes a while; give up long before CI does.
INSTALL_TIMEOUT = 900


class VirtualEnv:
    """A fresh virtual environment, built with uv when it is on PATH (fast, cached),
    else with venv and pip."""

    def __init__(self, path: Path, python: str = sys.executable) -> None:
        self.path = path
        self.uv = shutil.which("uv")
        if self.uv:
            self._check([self.uv, "venv", "--quiet", "--python", python, str(path)])
        else:
            self._check([python, "-m", "venv", str(path)])
        self.python = str(path / "bin" / "python")

    def _check(self, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, **kwargs
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
                pytrace=False,
            )
        return result

    def install(self, *requirements: str | Path) -> None:
        args = [str(r) for r in requirements]
        if self.uv:
            self._check([self.uv, "pip", "install", "--quiet", "--python", self.python, *args])
        else:
            self._check([self.python, "-m", "pip", "install", "--quiet", *args])

    def run(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args[0]`` from the environment's bin directory (``python``, ``caxton``)."""
        executable = str(self.path / "bin" / args[0])
        return subprocess.run(
            [executable, *args[1:]],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=clean_environment({**(env or {}), "VIRTUAL_ENV": str(self.path)}),
            timeout=INSTALL_TIMEOUT,
        )

    def plugins(self, *options: str) -> list[dict[str, Any]]:
        """``caxton plugins --json`` in this environment."""
        result = self.run("caxton", "plugins", "--json", *options)
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows


def caxton_command() -> str:
    """The ``caxton`` script of the environment running the tests."""
    script = Path(sys.executable).parent / "caxton"
    if not script.exists():
        pytest.fail(f"caxton is not installed in {sys.prefix}: pip install ./caxton-core")
    return str(script)


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``CAXTON_*`` settings, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CAXTON_")}
    return {**base, **(extra or {})}


def run_caxton(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``caxton ARGS`` unaffected by the ``CAXTON_*`` variables of the test process."""
    return subprocess.run(
        [caxton_command(), *args],
        capture_output=True,
        text=True,
        env=clean_environment(env),
        timeout=120,
    )
