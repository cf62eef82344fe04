"""The dashboard at `/dashboard` in a real headless Chromium against a real `scaleset serve` (M-5, M-6,
M-17, M-25; docs/dashboard.md).

The page signs in with the admin token, lists the resource groups and scale sets, and for a 4-instance
set over two zones draws one heat-map row per update domain. Through the page the test changes the
model's image version, upgrades update domain 0 by hand (M-3, M-5, M-17), then starts a rolling upgrade
with a batch size typed into the page (M-6, M-10) and watches the heat map and the progress move to
Completed, comparing what the page shows with what the ARM API says; then it cancels a second rolling
upgrade from the page.

The browser is Debian's chromium (`scripts/setup` installs it); Playwright drives it. Without it the
tests fail and say so: they never skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Locator, Page, Playwright, expect, sync_playwright

from tests.e2e.conftest import serve_module
from tests.support import (
    NETWORK_API,
    REPO,
    ServerProcess,
    eventually,
    instance_addresses,
    lb_path,
    publish_image,
    put_health_probe,
    scale_set_body,
    server_log_errors,
    set_path,
)

pytestmark = pytest.mark.e2e
CHROMIUM = Path(os.environ.get("SCALESET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these, chromium's own background connections are refused on a closed network and its
    # start-up stalls.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
GROUP = "rg-dash"
SKU = "dash"
COMPUTE_API = {"api-version": "2026-04-01"}
Json = dict[str, Any]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve_module("scaleset-dashboard-", GROUP)


@pytest.fixture(scope="module")
def browser_context() -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the dashboard tests need Chromium at {CHROMIUM}: run scripts/setup (as root it installs "
            "Debian's chromium) or `apt-get install chromium`, or set SCALESET_CHROMIUM",
            pytrace=False,
        )
    profile = tempfile.mkdtemp(prefix="scaleset-chromium-")
    playwright: Playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1100},
        )
        try:
            yield context
        finally:
            context.close()
    finally:
        playwright.stop()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context: BrowserContext) -> Iterator[Page]:
    """A fresh tab; at its end, no script error and no Content-Security-Policy violation happened."""
    tab = browser_context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    try:
        yield tab
    finally:
        tab.close()
    assert not problems, problems


# -------------------------------------------------------------------------------------------- helpers
def publish(server: ServerProcess, image: str, version: str) -> None:
    # an earlier test may have published it already
    publish_image(server, image, sku=SKU, version=version, already_published_ok=True)


def api_vms(server: ServerProcess, name: str) -> dict[str, Json]:
    with server.client() as client:
        url: str | None = set_path(server, GROUP, name, "virtualMachines")
        params: Any = {**COMPUTE_API, "$expand": "instanceView"}
        found: dict[str, Json] = {}
        while url:
            response = client.get(url, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            found.update({vm["instanceId"]: vm for vm in page["value"]})
            url, params = page.get("nextLink"), None
    return found


def health(vm: Json) -> str | None:
    status = (vm["properties"]["instanceView"].get("vmHealth") or {}).get("status") or {}
    code: str | None = status.get("code")
    return code


def all_healthy(server: ServerProcess, name: str, count: int) -> dict[str, Json] | None:
    vms = api_vms(server, name)
    healthy = len(vms) == count and all(health(vm) == "HealthState/healthy" for vm in vms.values())
    return vms if healthy else None


def domains(vms: dict[str, Json]) -> dict[int, list[str]]:
    """update domain → its instance ids, as the API reports them."""
    result: dict[int, list[str]] = {}
    for instance_id, vm in vms.items():
        result.setdefault(vm["properties"]["instanceView"]["platformUpdateDomain"], []).append(instance_id)
    return {ud: sorted(ids, key=int) for ud, ids in sorted(result.items())}


def cell(page: Page, instance_id: str) -> Locator:
    return page.locator(f'#heatmap .cell[data-instance-id="{instance_id}"]')


def row_ids(page: Page, domain: int) -> list[str]:
    ids: list[str] = page.locator(f'#heatmap tbody tr[data-ud="{domain}"] .cell').evaluate_all(
        "cells => cells.map(c => c.dataset.instanceId)"
    )
    return sorted(ids, key=int)


def cells_say(page: Page, ids: list[str], **data: str) -> bool:
    """Every listed cell carries these data attributes (state, old-model, batch) right now."""
    for instance_id in ids:
        for key, value in data.items():
            if cell(page, instance_id).get_attribute(f"data-{key.replace('_', '-')}") != value:
                return False
    return True


def sign_in(page: Page, server: ServerProcess, token: str | None = None) -> None:
    page.goto(f"{server.endpoint}/dashboard")
    page.get_by_label("API token").fill(token or server.admin_token)
    page.get_by_role("button", name="Sign in").click()


@contextlib.contextmanager
def a_load_balancer_probe(server: ServerProcess, name: str) -> Iterator[str]:
    """A load balancer whose HTTP probe watches the webapp's /health: the set's health source."""
    probe_id = put_health_probe(server, GROUP, name)
    try:
        yield probe_id
    finally:
        with server.client() as client:
            client.delete(lb_path(server, GROUP, name), params=NETWORK_API)


@contextlib.contextmanager
def a_scale_set(server: ServerProcess, name: str, body: Json) -> Iterator[None]:
    with server.client() as client:
        response = client.put(set_path(server, GROUP, name), params=COMPUTE_API, json=body)
        assert response.status_code == 201, response.text
        try:
            yield
        finally:
            deleted = client.delete(set_path(server, GROUP, name), params=COMPUTE_API)
            assert deleted.status_code in (200, 202, 204), deleted.text
            eventually(
                lambda: client.get(set_path(server, GROUP, name), params=COMPUTE_API).status_code == 404,
                60,
                what=f"{name} deleted",
            )


# ------------------------------------------------------------------------------------- static serving
def test_the_page_is_public_static_and_locked_down(server: ServerProcess) -> None:
    """The page and its files need no token (the data calls do) and carry a CSP without inline script."""
    with httpx.Client(base_url=server.endpoint, timeout=10) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        scripts = re.findall(r'src="([^"]+)"', page.text)
        assert scripts == ["/dashboard/app.js"]
        for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            response = client.get(f"/dashboard/{asset}")
            assert response.status_code == 200, asset
            assert response.headers["content-type"].startswith(kind), response.headers
            assert response.headers["content-security-policy"] == policy
        assert client.get("/dashboard/").headers["location"] == "/dashboard"
        for missing in ("/dashboard/nothing.js", "/dashboard/..%2Fapi%2Fapp.py", "/dashboard/__init__.py"):
            response = client.get(missing)
            assert response.status_code == 404, missing
            assert response.json()["error"]["code"] == "NotFound"
        # The data behind it is not public.
        listed = client.get(f"/subscriptions/{server.subscription}/resourcegroups", params=COMPUTE_API)
        assert listed.status_code == 401


def test_a_wrong_token_is_refused_with_the_servers_message(server: ServerProcess, page: Page) -> None:
    sign_in(page, server, token="not-a-token")
    expect(page.locator("#login-error")).to_contain_text("AuthenticationFailed")
    expect(page.locator("#workspace")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('scaleset.token')") is None


# ------------------------------------------------------------------------------ the page's own rules
def vm_with(provisioning: str, power: str, health: str | None) -> Json:
    view: Json = {
        "statuses": [{"code": f"ProvisioningState/{provisioning}"}, {"code": f"PowerState/{power}"}],
        "platformUpdateDomain": 0,
    }
    if health is not None:
        view["vmHealth"] = {"status": {"code": f"HealthState/{health}"}}
    return {"instanceId": "0", "properties": {"latestModelApplied": True, "instanceView": view}}


def test_cell_states_and_batch_sizes_follow_the_documented_rules(server: ServerProcess, page: Page) -> None:
    """The heat map's state per instance is the table of docs/dashboard.md, and the batch size the page
    announces is the engine's own arithmetic (domain/batches.py)."""
    from scaleset.domain.batches import batch_size

    cases = [
        (vm_with("failed", "running", "healthy"), "failed"),
        (vm_with("updating", "starting", None), "upgrading"),
        (vm_with("creating", "starting", None), "upgrading"),
        (vm_with("succeeded", "starting", None), "upgrading"),
        (vm_with("succeeded", "deallocated", None), "stopped"),
        (vm_with("succeeded", "stopped", "healthy"), "stopped"),
        (vm_with("succeeded", "running", "unhealthy"), "unhealthy"),
        (vm_with("succeeded", "running", "unknown"), "unhealthy"),
        (vm_with("succeeded", "running", "healthy"), "healthy"),
        (vm_with("succeeded", "running", "initializing"), "running"),
        (vm_with("succeeded", "running", None), "running"),
        (vm_with("succeeded", "unknown", None), "unknown"),
    ]
    sizes = [(percent, count) for percent in (5, 20, 33, 34, 50, 100) for count in (1, 3, 4, 10, 101)]
    page.goto(f"{server.endpoint}/dashboard")
    found = page.evaluate(
        """async ([vms, sizes]) => {
            const states = await import("/dashboard/states.js");
            return [vms.map(states.stateOf), sizes.map(([p, n]) => states.batchSize(p, n))];
        }""",
        [[vm for vm, _ in cases], sizes],
    )
    assert found[0] == [state for _, state in cases]
    assert found[1] == [batch_size(percent, count) for percent, count in sizes]
    documented = (REPO / "docs" / "dashboard.md").read_text()
    for _, state in cases:
        assert f"| {state.capitalize()} |" in documented, state


# ---------------------------------------------------------------------------------- the whole journey
def test_heat_map_update_domain_upgrade_and_rolling_upgrade_from_the_page(
    server: ServerProcess, page: Page
) -> None:
    """M-6: heat map with one row per update domain and zones as columns; a model change marks every
    instance 'old model'; 'Upgrade UD 0' upgrades exactly that domain; a rolling upgrade with the batch
    size typed in the page finishes the rest, with live progress, and ends Completed; a second one is
    cancelled from the page and stops after its first batch."""
    name = "web"
    log_start = server.log_path.stat().st_size if server.log_path else 0
    publish(server, "webapp-1.0.0", "1.0.0")
    publish(server, "webapp-1.1.0", "1.1.0")
    body = scale_set_body(4, version="1.0.0", zones=["1", "2"], data_disk=False)
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = SKU
    with a_load_balancer_probe(server, "lb-dash") as probe_id:
        body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": probe_id}}
        with a_scale_set(server, name, body):
            before = eventually(lambda: all_healthy(server, name, 4), 60, 0.5, "4 healthy instances")
            by_domain = domains(before)
            assert len(by_domain) == 2, by_domain  # 4 instances over 2 zones: UD 0 and 1 in each zone
            journey(server, page, name, before, by_domain)
    assert not server_log_errors(server, log_start), server.log_path


def journey(
    server: ServerProcess, page: Page, name: str, before: dict[str, Json], by_domain: dict[int, list[str]]
) -> None:
    all_ids = sorted(before, key=int)
    # ---- sign in, find the set in the navigation, open it
    sign_in(page, server)
    link = page.locator(f'.nav-link[data-set="{GROUP}/{name}"]')
    expect(link).to_contain_text("4 × Manual")
    link.click()
    expect(page.locator("#set-title")).to_have_text(name)
    assert page.evaluate("sessionStorage.getItem('scaleset.token')") == server.admin_token

    # ---- the heat map: one row per update domain, a column per zone, every instance healthy
    rows = page.locator("#heatmap tbody tr")
    expect(rows).to_have_count(len(by_domain))
    expect(page.locator("#heatmap thead th")).to_have_text(
        ["Update domain", "Zone 1", "Zone 2", "Manual upgrade"]
    )
    for domain, ids in by_domain.items():
        assert row_ids(page, domain) == ids
        for instance_id in ids:
            zone = before[instance_id]["zones"][0]
            in_column = page.locator(f'#heatmap tr[data-ud="{domain}"] td[data-zone="{zone}"] .cell')
            assert instance_id in in_column.evaluate_all("cells => cells.map(c => c.dataset.instanceId)")
    eventually(lambda: cells_say(page, all_ids, state="healthy", old_model="false"), 20, what="healthy cells")
    expect(page.locator("#set-summary")).to_contain_text("4 healthy")
    expect(cell(page, "0")).to_have_attribute("aria-label", re.compile(r"Instance 0, Healthy, image 1\.0\.0"))

    # ---- the instance view on hover, and the cells are reachable from the keyboard
    addresses = instance_addresses(server, GROUP, name)
    cell(page, "1").hover()
    detail = page.locator("#instance-detail")
    expect(detail).to_contain_text(f"{name}_1")
    expect(detail).to_contain_text(addresses["1"])
    expect(detail).to_contain_text("HealthState/healthy")
    expect(detail).to_contain_text("PowerState/running")
    zone = before["1"]["zones"][0]
    expect(detail.locator("dt:text-is('Zone') + dd")).to_have_text(zone)
    domain_of_1 = before["1"]["properties"]["instanceView"]["platformUpdateDomain"]
    expect(detail.locator("dt:text-is('Update domain') + dd")).to_have_text(str(domain_of_1))
    page.mouse.move(0, 0)
    first, below = by_domain[0][0], by_domain[1][0]
    cell(page, first).focus()
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.dataset.instanceId") == below
    expect(detail).to_contain_text(f"{name}_{below}")

    # ---- an error from the API is shown as the ARM error says it
    page.get_by_label("…or a custom image id").fill("/subscriptions/x/images/custom")
    page.get_by_role("button", name="Update model").click()
    with server.client() as client:
        refused = client.patch(
            set_path(server, GROUP, name),
            params=COMPUTE_API,
            json={
                "properties": {
                    "virtualMachineProfile": {
                        "storageProfile": {"imageReference": {"id": "/subscriptions/x/images/custom"}}
                    }
                }
            },
        )
    assert refused.status_code == 400
    error = refused.json()["error"]
    expect(page.locator("#model-error")).to_contain_text(f"{error['code']}: {error['message']}")
    page.get_by_label("…or a custom image id").fill("")

    # ---- a new image version in the model: in Manual mode every instance is now on an old model (M-3)
    page.get_by_label("Version").select_option("1.1.0")
    page.get_by_role("button", name="Update model").click()
    eventually(lambda: cells_say(page, all_ids, old_model="true"), 20, what="every cell marked old model")
    assert all(vm["properties"]["latestModelApplied"] is False for vm in api_vms(server, name).values())
    expect(page.locator("#set-facts")).to_contain_text(f"scaleset:webapp:{SKU}:1.1.0")
    expect(page.locator("#model-error")).to_be_empty()

    # ---- upgrade update domain 0 only (M-5, M-17)
    ud0, ud1 = by_domain[0], by_domain[1]
    page.get_by_role("button", name=re.compile(r"^Upgrade update domain 0 ")).click()
    eventually(
        lambda: cells_say(page, ud0, state="healthy", old_model="false"), 60, 0.3, "UD 0 upgraded and healthy"
    )
    after_ud0 = api_vms(server, name)
    for instance_id, vm in after_ud0.items():
        upgraded = instance_id in ud0
        assert vm["properties"]["latestModelApplied"] is upgraded, instance_id
        expected = "1.1.0" if upgraded else "1.0.0"
        assert vm["properties"]["storageProfile"]["imageReference"]["exactVersion"] == expected
        expect(cell(page, instance_id).locator(".cell-version")).to_have_text(expected)
    assert cells_say(page, ud1, old_model="true")
    expect(page.get_by_role("button", name=re.compile(r"^Upgrade update domain 0 "))).to_be_disabled()

    # ---- a rolling upgrade of the rest with a batch size typed into the page (M-6, M-10)
    page.get_by_label("Batch size (% of instances)").fill("50")
    expect(page.locator("#batch-hint")).to_contain_text("2 of 4 instances per batch")
    page.get_by_role("button", name="Start rolling upgrade").click()
    badge = page.locator("#upgrade-badge")
    expect(badge).to_have_text("Rolling forward", timeout=20_000)
    expect(page.get_by_role("button", name="Cancel upgrade")).to_be_enabled()
    # The instances of the current batch are highlighted while they change.
    expect(page.locator("#heatmap .cell.batch").first).to_be_visible(timeout=30_000)
    batch = page.locator("#heatmap .cell.batch").evaluate_all("cells => cells.map(c => c.dataset.instanceId)")
    assert batch and set(batch) <= set(ud1), batch
    expect(page.locator("#upgrade-progress")).to_contain_text("Current batch")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-mid-upgrade.png"), full_page=True)

    expect(badge).to_have_text("Completed", timeout=90_000)
    expect(page.locator("#upgrade-progress")).to_contain_text(
        "2 of 2 upgraded · 0 in progress · 0 pending · 0 failed"
    )
    eventually(
        lambda: cells_say(page, all_ids, state="healthy", old_model="false", batch="false"),
        30,
        what="every cell healthy on the latest model",
    )
    for instance_id in all_ids:
        expect(cell(page, instance_id).locator(".cell-version")).to_have_text("1.1.0")
    with server.client() as client:
        latest = client.get(
            set_path(server, GROUP, name, "rollingUpgrades", "latest"), params=COMPUTE_API
        ).json()
        history = client.get(set_path(server, GROUP, name, "osUpgradeHistory"), params=COMPUTE_API)
    properties = latest["properties"]
    assert properties["runningStatus"]["code"] == "Completed"
    assert properties["policy"]["maxBatchInstancePercent"] == 50  # what the page set before starting
    assert properties["progress"]["successfulInstanceCount"] == 2
    final = api_vms(server, name)
    assert all(vm["properties"]["latestModelApplied"] for vm in final.values())
    assert {vm["properties"]["instanceView"]["osVersion"] for vm in final.values()} == {"1.1.0"}
    expect(page.locator("#activity")).to_contain_text("Rolling upgrade: succeeded.")

    # ---- the OS upgrade history, as the API serves it (another part of scaleset; 404 on older servers)
    history_rows = page.locator("#history tbody tr")
    if history.status_code == 404:
        expect(page.locator("#history")).to_contain_text("does not serve the OS upgrade history")
    else:
        assert history.status_code == 200, history.text
        entries = history.json()["value"]
        assert entries, "a completed OS upgrade is in the history"
        expect(history_rows).to_have_count(len(entries), timeout=15_000)
        expect(history_rows.first).to_contain_text("Completed")

    # ---- back to 1.0.0, and a rolling upgrade cancelled from the page: it stops after its batch
    page.get_by_label("Version").select_option("1.0.0")
    page.get_by_role("button", name="Update model").click()
    eventually(lambda: cells_say(page, all_ids, old_model="true"), 20, what="every cell old again")
    page.get_by_label("Batch size (% of instances)").fill("25")
    page.get_by_role("button", name="Start rolling upgrade").click()
    expect(badge).to_have_text("Rolling forward", timeout=20_000)
    page.get_by_role("button", name="Cancel upgrade").click()
    expect(page.locator("#activity")).to_contain_text("Cancel requested")
    expect(badge).to_have_text("Cancelled", timeout=60_000)
    expect(page.get_by_role("button", name="Cancel upgrade")).to_be_disabled()
    expect(page.get_by_role("button", name="Start rolling upgrade")).to_be_enabled()
    with server.client() as client:
        cancelled = client.get(
            set_path(server, GROUP, name, "rollingUpgrades", "latest"), params=COMPUTE_API
        ).json()
    status = cancelled["properties"]["runningStatus"]
    assert (status["code"], status["lastAction"]) == ("Cancelled", "Cancel")
    assert cancelled["properties"]["policy"]["maxBatchInstancePercent"] == 25
    still_old = [i for i, vm in api_vms(server, name).items() if not vm["properties"]["latestModelApplied"]]
    assert still_old, "a cancel in the first batch leaves instances on the old model"
    eventually(lambda: cells_say(page, still_old, old_model="true"), 20, what="the page shows which")
