"""The web console at /ui in Debian's Chromium, against a real 3-node cluster with auth
on: the map shows three alive nodes, an agent deployed through the page runs on n3, a
killed n3 turns failed and its agent reappears on a survivor, a viewer sees no deploy
form and no action, and nothing leaks without credentials. Screenshots go to the nox
report directory (docs/console.md shows them)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ProcessCluster

pytestmark = pytest.mark.cluster

#: Seconds the page has to show what the cluster did (failure detection, failover).
SETTLE = 30_000


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(url + "/ui/")
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#credential", key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")


def test_the_console_shows_and_manages_the_cluster(
    make_cluster: Callable[..., ProcessCluster],
    browser: Any,
    echo: bytes,
    tmp_path: Path,
    screenshots: Path,
) -> None:
    from playwright.sync_api import expect

    cluster = make_cluster(extra={"security": {"auth_enabled": True}})
    n1, _, n3 = cluster.start(3, roles=("admin", "viewer"))
    module = tmp_path / "echo.wasm"
    module.write_bytes(echo)

    # Nothing but the empty shell without credentials; strict CSP on it.
    status, headers, body = fetch(n1.api_url + "/ui/")
    assert status == 200
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert b"n1" not in body
    assert fetch(n1.api_url + "/api/v1/agents?scope=cluster")[0] == 401
    assert fetch(n1.api_url + "/api/v1/whoami")[0] == 401

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(n1.api_url + "/ui/")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator(".node")).to_have_count(0)
    page.screenshot(path=str(screenshots / "console-signin.png"))

    sign_in(page, n1.api_url, str(n1.api_key))
    expect(page.locator('.node[data-status="alive"]')).to_have_count(3)
    for node_id in ("n1", "n2", "n3"):
        expect(page.locator(f'.node[data-node="{node_id}"]')).to_have_attribute(
            "data-status", "alive"
        )

    # Deploy through the page, on n3, with a confirmation.
    page.click('nav a[data-view="agents"]')
    page.set_input_files("#deploy-file", str(module))
    page.select_option("#deploy-node", "n3")
    page.click("#deploy-button")
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-yes")
    row = page.locator('tr[data-agent="echo"]')
    expect(row).to_have_attribute("data-node", "n3", timeout=SETTLE)
    for n in range(20):
        assert n1.ask("echo", f"hi {n}")["reply"]["content"] == f"hi {n}"
    page.click('tr[data-agent="echo"] button[data-action="suspend"]')
    page.click("#confirm-yes")
    expect(row).to_have_attribute("data-state", "suspended", timeout=SETTLE)
    page.click('tr[data-agent="echo"] button[data-action="resume"]')
    page.click("#confirm-yes")
    expect(row).to_have_attribute("data-state", "running", timeout=SETTLE)
    page.screenshot(path=str(screenshots / "console-agents.png"))
    page.click('nav a[data-view="cluster"]')
    for n in range(20):
        n1.ask("echo", f"again {n}")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(screenshots / "console-cluster.png"))

    # n3 dies: the map shows it failed, and echo comes back on a survivor.
    cluster.wait_until(
        lambda: any(
            e["text"].startswith("Agent 'echo' replicated to ")
            for e in n3.request("GET", "/api/v1/cluster/events?limit=1000")["events"]
        ),
        15,
        "echo replicated",
    )
    n3.kill()
    expect(page.locator('.node[data-node="n3"]')).to_have_attribute(
        "data-status", "failed", timeout=SETTLE
    )
    page.screenshot(path=str(screenshots / "console-node-failed.png"))
    page.click('nav a[data-view="agents"]')
    expect(page.locator('tr[data-agent="echo"]')).to_have_attribute(
        "data-node", re.compile("^n[12]$"), timeout=SETTLE
    )

    # A viewer reads, and sees neither the deploy form nor an action.
    viewer = browser.new_page(viewport={"width": 1280, "height": 700})
    sign_in(viewer, n1.api_url, n1.keys["viewer"])
    expect(viewer.locator("#who")).to_contain_text("viewer")
    viewer.click('nav a[data-view="agents"]')
    expect(viewer.locator('tr[data-agent="echo"]')).to_be_visible()
    expect(viewer.locator("#deploy-form")).to_be_hidden()
    expect(viewer.locator("#deploy-button")).to_be_hidden()
    expect(viewer.locator("button[data-action]")).to_have_count(0)
    expect(viewer.locator('nav a[data-view="audit"]')).to_be_hidden()
    viewer.screenshot(path=str(screenshots / "console-viewer.png"))

    viewer.click('nav a[data-view="dead"]')
    expect(viewer.locator("#dead")).to_be_visible()

    # The admin's audit log has the page's deploy.
    page.click('nav a[data-view="audit"]')
    expect(page.locator("#audit tbody tr").first).to_be_visible()
    expect(page.locator("#audit")).to_contain_text("deploy_agent")
    assert errors == [], errors
