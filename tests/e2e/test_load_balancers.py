"""Load balancers and their probes on the wire and through the CLI, against a real `scaleset serve` (M-11).

A probe is what a scale set names in `networkProfile.healthProbe.id` as its health source; while one does,
the probe can be neither deleted nor dropped from its load balancer.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess, run_cli, scale_set_body

pytestmark = pytest.mark.e2e
API = {"api-version": "2024-05-01"}  # what azure-mgmt-network sends; any version is accepted
GROUP = "rg-network"
LB_TYPE = "Microsoft.Network/loadBalancers"

Json = dict[str, Any]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def lb_path(server: ServerProcess, name: str = "", group: str = GROUP) -> str:
    base = (
        f"/subscriptions/{server.subscription}/resourceGroups/{group}/providers/Microsoft.Network/"
        "loadBalancers"
    )
    return f"{base}/{name}" if name else base


def probe_id(server: ServerProcess, lb: str, probe: str, group: str = GROUP) -> str:
    return f"{lb_path(server, lb, group)}/probes/{probe}"


def http_probe(name: str = "health", **properties: Any) -> Json:
    return {
        "name": name,
        "properties": {"protocol": "Http", "port": 8080, "requestPath": "/health", **properties},
    }


def lb_body(*probes: Json, **top: Any) -> Json:
    return {"location": "eastus", "properties": {"probes": list(probes)}, **top}


def assert_error(response: httpx.Response, status: int, code: str, target: str | None = None) -> Json:
    assert response.status_code == status, response.text
    error: Json = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if target is not None:
        assert error.get("target") == target, error
    return error


@pytest.fixture(scope="module")
def client(published: ServerProcess) -> Iterator[httpx.Client]:
    with published.client() as http:
        response = http.put(
            f"/subscriptions/{published.subscription}/resourceGroups/{GROUP}",
            params=API,
            json={"location": "eastus"},
        )
        assert response.status_code in (200, 201), response.text
        yield http


# ------------------------------------------------------------------------------------------- resources
def test_create_get_list_update_delete(published: ServerProcess, client: httpx.Client) -> None:
    name = unique("lb")
    path = lb_path(published, name)

    created = client.put(path, params=API, json=lb_body(http_probe(), tags={"team": "web"}))

    assert created.status_code == 201, created.text
    view = created.json()
    assert view["id"] == path
    assert (view["name"], view["type"], view["location"], view["tags"]) == (
        name,
        LB_TYPE,
        "eastus",
        {"team": "web"},
    )
    assert view["properties"]["provisioningState"] == "Succeeded"
    assert view["properties"]["probes"] == [
        {
            "id": f"{path}/probes/health",
            "name": "health",
            "type": f"{LB_TYPE}/probes",
            "properties": {
                "protocol": "Http",
                "port": 8080,
                "requestPath": "/health",
                "intervalInSeconds": 15,
                "numberOfProbes": 2,
                "provisioningState": "Succeeded",
            },
        }
    ]
    assert client.get(path, params=API).json() == view
    listed = client.get(lb_path(published), params=API)
    assert listed.status_code == 200
    assert view in listed.json()["value"]

    tcp = {
        "name": "ssh",
        "properties": {"protocol": "tcp", "port": 22, "intervalInSeconds": 5, "probeThreshold": 3},
    }
    updated = client.put(path, params=API, json=lb_body(http_probe(port=9090), tcp))

    assert updated.status_code == 200, updated.text
    probes = {p["name"]: p["properties"] for p in updated.json()["properties"]["probes"]}
    assert probes["health"]["port"] == 9090
    assert probes["ssh"] == {
        "protocol": "Tcp",
        "port": 22,
        "intervalInSeconds": 5,
        "numberOfProbes": 2,
        "probeThreshold": 3,
        "provisioningState": "Succeeded",
    }
    assert updated.json()["tags"] == {}  # PUT replaces the whole resource

    assert client.delete(path, params=API).status_code == 200
    assert_error(client.get(path, params=API), 404, "ResourceNotFound")
    assert client.delete(path, params=API).status_code == 204  # ARM: deleting what is gone is no error


def test_a_get_body_can_be_put_back_unchanged(published: ServerProcess, client: httpx.Client) -> None:
    path = lb_path(published, unique("lb"))
    rules = [
        {
            "name": "web",
            "properties": {
                "frontendPort": 80,
                "backendPort": 8080,
                "protocol": "Tcp",
                "probe": {"id": f"{path}/probes/health"},
            },
        }
    ]
    extra = {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": "10.0.0.4"}}],
        "backendAddressPools": [{"name": "pool"}],
        "loadBalancingRules": rules,
    }
    body = lb_body(http_probe(), sku={"name": "Standard"})
    body["properties"].update(extra)

    first = client.put(path, params=API, json=body).json()

    for key, value in extra.items():
        assert first["properties"][key] == value
    assert first["sku"] == {"name": "Standard"}
    assert first["properties"]["probes"][0]["properties"]["loadBalancingRules"] == [
        {"id": f"{path}/loadBalancingRules/web"}
    ]
    again = client.put(path, params=API, json=first)
    assert again.status_code == 200, again.text
    assert again.json() == first
    client.delete(path, params=API)


def test_names_ignore_case_and_keep_the_case_they_were_created_with(
    published: ServerProcess, client: httpx.Client
) -> None:
    name = unique("Front")
    path = lb_path(published, name)
    client.put(path, params=API, json=lb_body(http_probe("Health")))
    shouting = (
        f"/SUBSCRIPTIONS/{published.subscription}/RESOURCEGROUPS/{GROUP.upper()}/PROVIDERS/"
        f"microsoft.network/LOADBALANCERS/{name.upper()}"
    )

    fetched = client.get(shouting, params=API)
    updated = client.put(shouting, params=API, json=lb_body(http_probe("Health", port=81)))
    probe = client.get(f"{shouting}/PROBES/HEALTH", params=API)

    assert fetched.status_code == 200, fetched.text
    assert (fetched.json()["name"], fetched.json()["id"]) == (name, path)
    assert updated.status_code == 200 and updated.json()["name"] == name
    assert probe.status_code == 200, probe.text
    assert probe.json()["name"] == "Health"
    assert probe.json()["id"] == f"{path}/probes/Health"
    assert probe.json()["properties"]["port"] == 81
    listed = client.get(f"{shouting}/probes", params=API).json()["value"]
    assert [p["name"] for p in listed] == ["Health"]
    assert client.delete(shouting, params=API).status_code == 200


def test_probe_sub_resources(published: ServerProcess, client: httpx.Client) -> None:
    name = unique("lb")
    path = lb_path(published, name)
    view = client.put(path, params=API, json=lb_body(http_probe("a"), http_probe("b", port=81))).json()

    listed = client.get(f"{path}/probes", params=API)
    single = client.get(f"{path}/probes/b", params=API)

    assert listed.status_code == 200
    assert listed.json() == {"value": view["properties"]["probes"]}
    assert single.json() == view["properties"]["probes"][1]
    assert_error(client.get(f"{path}/probes/c", params=API), 404, "ResourceNotFound")
    assert_error(client.get(f"{lb_path(published, 'nope')}/probes", params=API), 404, "ResourceNotFound")
    assert_error(client.get(f"{lb_path(published, 'nope')}/probes/a", params=API), 404, "ResourceNotFound")
    client.delete(path, params=API)


def test_a_missing_group(published: ServerProcess, client: httpx.Client) -> None:
    path = lb_path(published, "lb", group="no-such-group")

    assert_error(client.put(path, params=API, json=lb_body()), 404, "ResourceGroupNotFound")
    assert_error(client.get(path, params=API), 404, "ResourceGroupNotFound")
    assert_error(client.delete(path, params=API), 404, "ResourceGroupNotFound")
    assert_error(
        client.get(lb_path(published, group="no-such-group"), params=API), 404, "ResourceGroupNotFound"
    )


def test_a_token_is_needed(published: ServerProcess) -> None:
    response = httpx.get(f"{published.endpoint}{lb_path(published)}", params=API)

    assert_error(response, 401, "AuthenticationFailed")


# ------------------------------------------------------------------------------------------ bad input
PROBE0 = "properties.probes[0].properties"


@pytest.mark.parametrize(
    ("body", "code", "target"),
    [
        ([1], "InvalidParameter", "body"),
        ({"properties": {}}, "InvalidParameter", "location"),
        (lb_body(location="atlantis"), "LocationNotAvailableForResourceType", "location"),
        (lb_body(tags={"a": 1}), "InvalidParameter", "tags.a"),
        ({"location": "eastus", "properties": {"probes": "all"}}, "InvalidParameter", "properties.probes"),
        (lb_body({"name": "p", "properties": {"port": 80}}), "InvalidParameter", f"{PROBE0}.protocol"),
        (lb_body(http_probe(protocol="Udp")), "InvalidParameter", f"{PROBE0}.protocol"),
        (lb_body({"name": "p", "properties": {"protocol": "Tcp"}}), "InvalidParameter", f"{PROBE0}.port"),
        (lb_body(http_probe(port=0)), "InvalidParameter", f"{PROBE0}.port"),
        (lb_body(http_probe(port=70000)), "InvalidParameter", f"{PROBE0}.port"),
        (lb_body(http_probe(requestPath=None)), "InvalidParameter", f"{PROBE0}.requestPath"),
        (lb_body(http_probe(requestPath="health")), "InvalidParameter", f"{PROBE0}.requestPath"),
        (lb_body(http_probe(protocol="Tcp")), "InvalidParameter", f"{PROBE0}.requestPath"),
        (lb_body(http_probe(intervalInSeconds=4)), "InvalidParameter", f"{PROBE0}.intervalInSeconds"),
        (lb_body(http_probe(numberOfProbes=0)), "InvalidParameter", f"{PROBE0}.numberOfProbes"),
        (lb_body(http_probe(probeThreshold=0)), "InvalidParameter", f"{PROBE0}.probeThreshold"),
        (lb_body(http_probe("a"), http_probe("A")), "InvalidParameter", "properties.probes[1].name"),
    ],
)
def test_bad_bodies_are_refused_with_their_target(
    published: ServerProcess, client: httpx.Client, body: Any, code: str, target: str
) -> None:
    path = lb_path(published, unique("bad"))

    assert_error(client.put(path, params=API, json=body), 400, code, target)
    assert_error(client.get(path, params=API), 404, "ResourceNotFound")


def test_malformed_json_and_bad_names(published: ServerProcess, client: httpx.Client) -> None:
    path = lb_path(published, "lb")
    malformed = client.put(path, params=API, content=b"{", headers={"Content-Type": "application/json"})

    assert_error(malformed, 400, "InvalidRequestContent")
    assert_error(
        client.put(lb_path(published, "bad-"), params=API, json=lb_body()), 400, "InvalidParameter", "name"
    )


def test_a_refused_update_changes_nothing(published: ServerProcess, client: httpx.Client) -> None:
    path = lb_path(published, unique("lb"))
    before = client.put(path, params=API, json=lb_body(http_probe())).json()

    assert_error(
        client.put(path, params=API, json=lb_body(location="westus")), 400, "PropertyChangeNotAllowed"
    )
    assert_error(
        client.put(path, params=API, json=lb_body(http_probe(port=-1))),
        400,
        "InvalidParameter",
        f"{PROBE0}.port",
    )
    assert client.get(path, params=API).json() == before
    client.delete(path, params=API)


# ------------------------------------------------------------------------------ a probe a set uses
def set_path(server: ServerProcess, name: str) -> str:
    return (
        f"/subscriptions/{server.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
        f"virtualMachineScaleSets/{name}"
    )


def put_set_and_wait(client: httpx.Client, path: str, body: Json) -> Json:
    response = client.put(path, params=API, json=body)
    assert response.status_code in (200, 201), response.text
    deadline = time.monotonic() + 60
    while True:
        view: Json = client.get(path, params=API).json()
        if view["properties"]["provisioningState"] not in ("Creating", "Updating"):
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.2)


def delete_set_and_wait(client: httpx.Client, path: str) -> None:
    assert client.delete(path, params=API).status_code in (200, 202)
    deadline = time.monotonic() + 60
    while client.get(path, params=API).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def with_probe(body: Json, probe: str | None) -> Json:
    if probe is not None:
        body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": probe}}
    return body


def test_a_probe_in_use_cannot_be_deleted(published: ServerProcess, client: httpx.Client) -> None:
    lb, scale_set = unique("Front"), unique("web")
    path = lb_path(published, lb)
    before = client.put(path, params=API, json=lb_body(http_probe("Health"), http_probe("spare"))).json()
    # The set names the probe in another case than it was created with: ids compare without case.
    reference = probe_id(published, lb.upper(), "health", GROUP.upper())
    set_view = put_set_and_wait(
        client, set_path(published, scale_set), with_probe(scale_set_body(0, data_disk=False), reference)
    )
    assert set_view["properties"]["provisioningState"] == "Succeeded", set_view

    deleted = client.delete(path, params=API)
    dropped = client.put(path, params=API, json=lb_body(http_probe("spare")))
    emptied = client.put(path, params=API, json=lb_body())

    for response in (deleted, dropped, emptied):
        error = assert_error(response, 400, "InUseProbeCannotBeDeleted")
        assert scale_set in error["message"] and "Health" in error["message"], error
    assert client.get(path, params=API).json() == before
    # Changing the probe, or dropping another one, is fine while the set uses it.
    changed = client.put(path, params=API, json=lb_body(http_probe("HEALTH", port=8081)))
    assert changed.status_code == 200, changed.text
    assert [p["name"] for p in changed.json()["properties"]["probes"]] == ["HEALTH"]

    # Once the set no longer names it, the probe and its load balancer can go.
    put_set_and_wait(client, set_path(published, scale_set), scale_set_body(0, data_disk=False))
    assert client.delete(path, params=API).status_code == 200
    delete_set_and_wait(client, set_path(published, scale_set))


def test_a_deleted_set_releases_its_probe(published: ServerProcess, client: httpx.Client) -> None:
    lb, scale_set = unique("lb"), unique("web")
    path = lb_path(published, lb)
    client.put(path, params=API, json=lb_body(http_probe()))
    body = with_probe(scale_set_body(0, data_disk=False), probe_id(published, lb, "health"))
    put_set_and_wait(client, set_path(published, scale_set), body)
    assert_error(client.delete(path, params=API), 400, "InUseProbeCannotBeDeleted")

    delete_set_and_wait(client, set_path(published, scale_set))

    assert client.delete(path, params=API).status_code == 200


def test_a_set_cannot_name_a_probe_that_does_not_exist(
    published: ServerProcess, client: httpx.Client
) -> None:
    lb = unique("lb")
    client.put(lb_path(published, lb), params=API, json=lb_body(http_probe()))
    path = set_path(published, unique("web"))

    for missing in (probe_id(published, lb, "other"), probe_id(published, "no-such-lb", "health")):
        response = client.put(path, params=API, json=with_probe(scale_set_body(0, data_disk=False), missing))
        assert_error(
            response,
            400,
            "InvalidParameter",
            "properties.virtualMachineProfile.networkProfile.healthProbe.id",
        )
    assert client.get(path, params=API).status_code == 404
    client.delete(lb_path(published, lb), params=API)


def test_deleting_a_group_deletes_its_load_balancers(published: ServerProcess, client: httpx.Client) -> None:
    group = unique("rg-lb")
    group_path = f"/subscriptions/{published.subscription}/resourceGroups/{group}"
    client.put(group_path, params=API, json={"location": "eastus"})
    client.put(lb_path(published, "lb", group), params=API, json=lb_body(http_probe()))
    try:
        assert client.delete(group_path, params=API).status_code in (200, 202)
        deadline = time.monotonic() + 30
        while client.get(group_path, params=API).status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        client.delete(lb_path(published, "lb", group), params=API)
        client.delete(group_path, params=API)


# ------------------------------------------------------------------------------------------------ CLI
def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(server, *args, timeout=120, env={"SCALESET_SUBSCRIPTION": server.subscription})


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout) if result.stdout.strip() else None


def test_cli(published: ServerProcess, client: httpx.Client) -> None:
    lb = unique("clilb")
    on_lb = ("-g", GROUP, "--lb-name", lb)

    def network(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(published, "network", "lb", *args)

    created = ok_json(network("create", "-g", GROUP, "-n", lb, "-l", "eastus"))
    http = ok_json(
        network(
            *("probe", "create", *on_lb, "-n", "http", "--protocol", "http", "--port", "8080"),
            *("--path", "/health", "--interval", "5", "--threshold", "3"),
        )
    )
    tcp = ok_json(
        network(
            *("probe", "create", *on_lb, "-n", "tcp", "--protocol", "Tcp", "--port", "22"),
            *("--number-of-probes", "4"),
        )
    )
    replaced = ok_json(
        network(
            *("probe", "create", *on_lb, "-n", "HTTP", "--protocol", "Https", "--port", "8443"),
            *("--path", "/ready"),
        )
    )

    assert created["name"] == lb and created["properties"]["probes"] == []
    assert http["name"] == "http"
    assert http["properties"]["intervalInSeconds"] == 5 and http["properties"]["numberOfProbes"] == 3
    assert tcp["properties"]["protocol"] == "Tcp" and tcp["properties"]["numberOfProbes"] == 4
    assert replaced["name"] == "HTTP" and replaced["properties"]["protocol"] == "Https"
    assert replaced["properties"]["intervalInSeconds"] == 15  # a replaced probe starts from the defaults
    assert sorted(p["name"] for p in ok_json(network("probe", "list", *on_lb))) == ["HTTP", "tcp"]
    assert ok_json(network("probe", "show", *on_lb, "-n", "tcp"))["id"] == probe_id(published, lb, "tcp")
    assert ok_json(network("show", "-g", GROUP, "-n", lb))["id"] == lb_path(published, lb)
    assert lb in [item["name"] for item in ok_json(network("list", "-g", GROUP))]
    table = network("probe", "list", *on_lb, "-o", "table")
    assert table.returncode == 0 and "8443" in table.stdout and "Https" in table.stdout

    refused = network("probe", "create", *on_lb, "-n", "nopath", "--protocol", "Http", "--port", "80")
    assert refused.returncode == 1, refused.stderr
    assert "ERROR (InvalidParameter)" in refused.stderr
    assert "Target: properties.probes[2].properties.requestPath" in refused.stderr

    assert ok_json(network("probe", "delete", *on_lb, "-n", "tcp")) is None
    probes = client.get(lb_path(published, lb), params=API).json()["properties"]["probes"]
    assert [p["name"] for p in probes] == ["HTTP"]
    missing = network("probe", "delete", *on_lb, "-n", "tcp")
    assert missing.returncode == 1 and "ResourceNotFound" in missing.stderr

    assert ok_json(network("delete", "-g", GROUP, "-n", lb)) is None
    gone = network("show", "-g", GROUP, "-n", lb)
    assert gone.returncode == 1 and "ERROR (ResourceNotFound)" in gone.stderr


def test_cli_create_takes_the_group_location(published: ServerProcess, client: httpx.Client) -> None:
    lb = unique("clilb")

    created = ok_json(cli(published, "network", "lb", "create", "-g", GROUP, "-n", lb, "--tags", "team=web"))

    assert (created["location"], created["tags"]) == ("eastus", {"team": "web"})
    client.delete(lb_path(published, lb), params=API)
