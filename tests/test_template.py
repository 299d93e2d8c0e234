"""``caxton plugin new KIND NAME`` produces a package whose own tests pass.

Each kind is generated into tmp, installed into a fresh virtual environment together
with caxton-core from this checkout (regular installs, as a plugin author would do),
and the generated test suite is run there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import CORE_DIR, ROOT, VirtualEnv, run_caxton

from caxton.cli.template import PLUGIN_KINDS, render_plugin
from caxton.errors import ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_cli_generates_a_package(tmp_path: Path) -> None:
    result = run_caxton("plugin", "new", "placement", "zone-first", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr
    package = tmp_path / "caxton-zone-first"
    assert f"created {package}" in result.stdout
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    assert project["name"] == "caxton-zone-first"
    assert project["entry-points"]["caxton.placement"] == {
        "zone-first": "caxton_zone_first.strategy:ZoneFirstPlacement"
    }
    assert (package / "src" / "caxton_zone_first" / "py.typed").exists()
    assert (package / "tests" / "test_strategy.py").exists()
    assert "caxton plugin new placement zone-first" in (package / "README.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plugin", "new", "scheduler", "x"], "unknown plugin kind 'scheduler'"),
        (["plugin", "new", "auth", "Bad_Name"], "plugin name 'Bad_Name' is not valid"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(args: list[str], message: str) -> None:
    result = run_caxton(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    render_plugin("auth", "token", tmp_path)
    with pytest.raises(ValidationError, match="already exists"):
        render_plugin("auth", "token", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(PLUGIN_KINDS))
def test_generated_package_tests_pass(kind: str, tmp_path: Path) -> None:
    name = f"gen-{kind.replace('_', '-')}"
    package = render_plugin(kind, name, tmp_path / "src")
    venv = VirtualEnv(tmp_path / "venv")
    # First-party plugins a template builds on come from this checkout, like core.
    requires = [ROOT / "plugins" / dist for dist in PLUGIN_KINDS[kind].requires]
    venv.install(f"{CORE_DIR}[test]", *requires, package)
    result = venv.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        cwd=package,
        # The sandbox suite runs the example agents of this checkout.
        env={"CAXTON_EXAMPLES_DIR": str(ROOT / "examples" / "agents")},
    )
    assert result.returncode == 0, f"{kind} template tests failed:\n{result.stdout[-6000:]}"
    assert " passed" in result.stdout
