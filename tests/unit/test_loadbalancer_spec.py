"""Validation of load balancer PUT bodies and the probe rules (M-11).

Every refusal is checked on its status, its code and its `target`, because that is what a client sees in
the ARM envelope.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scaleset.domain.errors import ArmError
from scaleset.domain.loadbalancer_spec import (
    ProbeRef,
    effective_number_of_probes,
    find_probe,
    parse_probe_id,
    removed_probes,
    validate_load_balancer,
)
from scaleset.providers.base import HealthProbe
from scaleset.services.loadbalancers import LoadBalancerService, ProbeSettings
from scaleset.store.db import Database, sqlite_url
from scaleset.store.tables import ResourceGroup
from tests.fakes import FakeClock

Json = dict[str, Any]
PROBE0 = "properties.probes[0].properties"


def http_probe(name: str = "http", **properties: Any) -> Json:
    return {
        "name": name,
        "properties": {"protocol": "Http", "port": 8080, "requestPath": "/health", **properties},
    }


def body(*probes: Json, **top: Any) -> Json:
    return {"location": "eastus", "properties": {"probes": list(probes)}, **top}


def refused(
    document: Any, target: str, code: str = "InvalidParameter", current: Json | None = None
) -> ArmError:
    with pytest.raises(ArmError) as caught:
        validate_load_balancer(document, "lb", current)
    assert (caught.value.status, caught.value.code, caught.value.target) == (400, code, target), caught.value
    return caught.value


# ------------------------------------------------------------------------------------------- accepted
def test_defaults_are_filled_in_and_protocol_is_canonical() -> None:
    document = validate_load_balancer(body(http_probe(protocol="hTTp")), "lb", None)

    assert document == {
        "location": "eastus",
        "tags": {},
        "properties": {
            "probes": [
                {
                    "name": "http",
                    "properties": {
                        "protocol": "Http",
                        "port": 8080,
                        "requestPath": "/health",
                        "intervalInSeconds": 15,
                        "numberOfProbes": 2,
                    },
                }
            ]
        },
    }


def test_tcp_probe_and_every_optional_setting() -> None:
    probe = {
        "name": "tcp",
        "properties": {
            "protocol": "tcp",
            "port": 22,
            "intervalInSeconds": 5,
            "numberOfProbes": 1,
            "probeThreshold": 3,
            "noHealthyBackendsBehavior": "allprobedup",
        },
    }

    (stored,) = validate_load_balancer(body(probe), "lb", None)["properties"]["probes"]

    assert stored["properties"] == {
        "protocol": "Tcp",
        "port": 22,
        "intervalInSeconds": 5,
        "numberOfProbes": 1,
        "probeThreshold": 3,
        "noHealthyBackendsBehavior": "AllProbedUp",
    }


def test_property_names_match_without_case() -> None:
    probe = {"Name": "p", "Properties": {"PROTOCOL": "Https", "Port": 443, "requestpath": "/"}}

    (stored,) = validate_load_balancer(body(probe), "lb", None)["properties"]["probes"]

    assert stored == {
        "name": "p",
        "properties": {
            "protocol": "Https",
            "port": 443,
            "requestPath": "/",
            "intervalInSeconds": 15,
            "numberOfProbes": 2,
        },
    }


def test_other_properties_are_kept_as_given_and_read_only_ones_dropped() -> None:
    frontends = [{"name": "fe", "properties": {"privateIPAddress": "10.0.0.4"}}]
    rules = [{"name": "r", "properties": {"probe": {"id": "whatever"}, "frontendPort": 80}}]
    document = validate_load_balancer(
        {
            "id": "/ignored",
            "name": "ignored",
            "type": "ignored",
            "etag": "W/1",
            "location": "West Europe",
            "tags": {"team": "web"},
            "sku": {"name": "Standard"},
            "unknownTopLevel": 1,
            "properties": {
                "provisioningState": "Succeeded",
                "resourceGuid": "x",
                "frontendIPConfigurations": frontends,
                "backendAddressPools": [{"name": "pool"}],
                "loadBalancingRules": rules,
                "probes": [
                    {
                        "id": "/ignored",
                        "type": "Microsoft.Network/loadBalancers/probes",
                        "etag": "W/1",
                        **http_probe(provisioningState="Succeeded", loadBalancingRules=[{"id": "/r"}]),
                    }
                ],
            },
        },
        "lb",
        None,
    )

    assert document["location"] == "westeurope"
    assert document["tags"] == {"team": "web"}
    assert document["sku"] == {"name": "Standard"}
    assert "unknownTopLevel" not in document
    properties = document["properties"]
    assert set(properties) == {
        "frontendIPConfigurations",
        "backendAddressPools",
        "loadBalancingRules",
        "probes",
    }
    assert properties["frontendIPConfigurations"] == frontends
    assert properties["loadBalancingRules"] == rules
    assert (
        properties["probes"][0]
        == validate_load_balancer(body(http_probe()), "lb", None)["properties"]["probes"][0]
    )


def test_no_properties_means_no_probes() -> None:
    assert validate_load_balancer({"location": "eastus"}, "lb", None)["properties"] == {"probes": []}


def test_the_input_is_not_changed() -> None:
    given = body(http_probe(protocol="http"), tags={"a": "b"})
    before = copy.deepcopy(given)

    validate_load_balancer(given, "lb", None)

    assert given == before


def test_update_may_omit_the_location() -> None:
    current = validate_load_balancer(body(), "lb", None)

    assert validate_load_balancer({"properties": {}}, "lb", current)["location"] == "eastus"
    assert validate_load_balancer({"location": "East US"}, "lb", current)["location"] == "eastus"


def test_null_optional_settings_take_the_defaults() -> None:
    probe = http_probe(intervalInSeconds=None, numberOfProbes=None, probeThreshold=None)

    (stored,) = validate_load_balancer(body(probe), "lb", None)["properties"]["probes"]

    assert stored["properties"]["intervalInSeconds"] == 15
    assert stored["properties"]["numberOfProbes"] == 2
    assert "probeThreshold" not in stored["properties"]


@pytest.mark.parametrize("name", ["a", "lb-1", "LB.web_", "x" * 80])
def test_valid_names(name: str) -> None:
    validate_load_balancer(body(http_probe(name)), name, None)


# ------------------------------------------------------------------------------------------- refused
@pytest.mark.parametrize("name", ["", "-lb", "lb-", "lb.", "a b", "x" * 81, "lb/1"])
def test_invalid_load_balancer_names(name: str) -> None:
    with pytest.raises(ArmError) as caught:
        validate_load_balancer(body(), name, None)
    assert (caught.value.code, caught.value.target) == ("InvalidParameter", "name")


def test_body_must_be_an_object() -> None:
    refused([], "body")
    refused(None, "body")


def test_location_is_required_and_known() -> None:
    refused({"properties": {}}, "location")
    refused(body(location="atlantis"), "location", "LocationNotAvailableForResourceType")


def test_location_cannot_change() -> None:
    current = validate_load_balancer(body(), "lb", None)

    refused(body(location="westus"), "location", "PropertyChangeNotAllowed", current)


@pytest.mark.parametrize(
    ("tags", "target"),
    [("web", "tags"), ({"team": 1}, "tags.team"), ({f"k{i}": "v" for i in range(51)}, "tags")],
)
def test_tags(tags: Any, target: str) -> None:
    refused(body(tags=tags), target)


def test_properties_and_probes_shapes() -> None:
    refused({"location": "eastus", "properties": []}, "properties")
    refused({"location": "eastus", "properties": {"probes": {}}}, "properties.probes")
    refused(body("probe"), "properties.probes[0]")
    refused(body({"name": "p"}), "properties.probes[0].properties")
    refused({"location": "eastus", "sku": "Standard"}, "sku")


@pytest.mark.parametrize(
    ("probe", "target"),
    [
        ({"properties": {"protocol": "Tcp", "port": 1}}, "properties.probes[0].name"),
        ({"name": "", "properties": {"protocol": "Tcp", "port": 1}}, "properties.probes[0].name"),
        ({"name": "bad name", "properties": {"protocol": "Tcp", "port": 1}}, "properties.probes[0].name"),
        ({"name": "p", "colour": "red", "properties": {}}, "properties.probes[0].colour"),
    ],
)
def test_probe_names_and_keys(probe: Json, target: str) -> None:
    refused(body(probe), target)


@pytest.mark.parametrize(
    ("properties", "target"),
    [
        ({"port": 80}, f"{PROBE0}.protocol"),
        ({"protocol": "Udp", "port": 80}, f"{PROBE0}.protocol"),
        ({"protocol": 1, "port": 80}, f"{PROBE0}.protocol"),
        ({"protocol": "Tcp"}, f"{PROBE0}.port"),
        ({"protocol": "Tcp", "port": 0}, f"{PROBE0}.port"),
        ({"protocol": "Tcp", "port": 65536}, f"{PROBE0}.port"),
        ({"protocol": "Tcp", "port": "80"}, f"{PROBE0}.port"),
        ({"protocol": "Tcp", "port": True}, f"{PROBE0}.port"),
        ({"protocol": "Tcp", "port": 80.5}, f"{PROBE0}.port"),
        ({"protocol": "Tcp", "port": 80, "requestPath": "/"}, f"{PROBE0}.requestPath"),
        ({"protocol": "Http", "port": 80}, f"{PROBE0}.requestPath"),
        ({"protocol": "Https", "port": 443}, f"{PROBE0}.requestPath"),
        ({"protocol": "Http", "port": 80, "requestPath": "health"}, f"{PROBE0}.requestPath"),
        ({"protocol": "Http", "port": 80, "requestPath": ""}, f"{PROBE0}.requestPath"),
        ({"protocol": "Http", "port": 80, "requestPath": 5}, f"{PROBE0}.requestPath"),
        ({"protocol": "Tcp", "port": 80, "intervalInSeconds": 4}, f"{PROBE0}.intervalInSeconds"),
        ({"protocol": "Tcp", "port": 80, "intervalInSeconds": "15"}, f"{PROBE0}.intervalInSeconds"),
        ({"protocol": "Tcp", "port": 80, "intervalInSeconds": 2**31}, f"{PROBE0}.intervalInSeconds"),
        ({"protocol": "Tcp", "port": 80, "numberOfProbes": 0}, f"{PROBE0}.numberOfProbes"),
        ({"protocol": "Tcp", "port": 80, "probeThreshold": 0}, f"{PROBE0}.probeThreshold"),
        ({"protocol": "Tcp", "port": 80, "probeThreshold": "2"}, f"{PROBE0}.probeThreshold"),
        (
            {"protocol": "Tcp", "port": 80, "noHealthyBackendsBehavior": "Maybe"},
            f"{PROBE0}.noHealthyBackendsBehavior",
        ),
        ({"protocol": "Tcp", "port": 80, "intervalSeconds": 5}, f"{PROBE0}.intervalSeconds"),
    ],
)
def test_probe_settings_are_checked(properties: Json, target: str) -> None:
    refused(body({"name": "p", "properties": properties}), target)


def test_boundaries_are_accepted() -> None:
    probe = {
        "name": "p",
        "properties": {"protocol": "Tcp", "port": 65535, "intervalInSeconds": 5, "numberOfProbes": 1},
    }
    validate_load_balancer(
        body(probe, {"name": "q", "properties": {"protocol": "Tcp", "port": 1}}), "lb", None
    )


def test_probe_names_are_unique_ignoring_case() -> None:
    error = refused(
        body(http_probe("a"), http_probe("Health"), http_probe("HEALTH")), "properties.probes[2].name"
    )

    assert "HEALTH" in error.message


def test_the_first_bad_probe_is_named() -> None:
    refused(body(http_probe("a"), http_probe("b", port=0)), "properties.probes[1].properties.port")


# -------------------------------------------------------------------------------------------- helpers
def test_parse_probe_id_ignores_the_case_of_fixed_segments() -> None:
    assert parse_probe_id(
        "/SUBSCRIPTIONS/sub/resourcegroups/RG/providers/microsoft.network/LOADBALANCERS/Lb/Probes/Http"
    ) == ProbeRef("sub", "RG", "Lb", "Http")


@pytest.mark.parametrize(
    "probe_id",
    [
        "",
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/loadBalancers/lb",
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/loadBalancers/lb/probes/p",
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/loadBalancers/lb/probes/p/x",
    ],
)
def test_parse_probe_id_refuses_other_ids(probe_id: str) -> None:
    assert parse_probe_id(probe_id) is None


def test_find_and_removed_probes() -> None:
    before = validate_load_balancer(body(http_probe("a"), http_probe("B"), http_probe("c")), "lb", None)
    after = validate_load_balancer(body(http_probe("b"), http_probe("d")), "lb", None)

    assert find_probe(before, "b") is not None and find_probe(before, "b")["name"] == "B"  # type: ignore[index]
    assert find_probe(before, "d") is None
    assert removed_probes(before, after) == ["a", "c"]


def test_probe_threshold_wins_over_number_of_probes() -> None:
    assert effective_number_of_probes({"numberOfProbes": 2}) == 2
    assert effective_number_of_probes({"numberOfProbes": 2, "probeThreshold": 4}) == 4


# ------------------------------------------------------------------------ the service's probe look-up
SUB = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LoadBalancerService]:
    db = Database(sqlite_url(tmp_path))
    db.migrate()
    clock = FakeClock()
    with db.write() as session:
        session.add(
            ResourceGroup(
                subscription=SUB, name="RG", name_key="rg", location="eastus", tags={}, created_at=clock.now()
            )
        )
    try:
        yield LoadBalancerService(db, clock)
    finally:
        db.close()


def probe_id(group: str = "RG", lb: str = "Front", probe: str = "Health") -> str:
    return (
        f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.Network/"
        f"loadBalancers/{lb}/probes/{probe}"
    )


def test_probe_settings_resolve_a_probe_id_ignoring_case(service: LoadBalancerService) -> None:
    service.put(SUB, "rg", "Front", body(http_probe("Health", intervalInSeconds=5, numberOfProbes=3)))

    settings = service.probe_settings(probe_id("rg", "FRONT", "health").lower())

    assert settings == ProbeSettings(
        probe=HealthProbe(protocol="Http", port=8080, request_path="/health", timeout_seconds=5.0),
        interval_seconds=5,
        number_of_probes=3,
    )
    assert service.probe_exists(probe_id())


def test_probe_settings_time_out_after_the_interval_or_30_seconds(service: LoadBalancerService) -> None:
    tcp = {
        "name": "Health",
        "properties": {"protocol": "Tcp", "port": 22, "intervalInSeconds": 60, "probeThreshold": 4},
    }
    service.put(SUB, "RG", "Front", body(tcp))

    settings = service.probe_settings(probe_id())

    assert settings is not None
    assert settings.probe == HealthProbe(protocol="Tcp", port=22, request_path=None, timeout_seconds=30.0)
    assert (settings.interval_seconds, settings.number_of_probes) == (60, 4)


@pytest.mark.parametrize(
    "missing",
    [
        probe_id(probe="other"),
        probe_id(lb="other"),
        probe_id(group="other"),
        probe_id().replace(SUB, "another-subscription"),
        "not an id",
    ],
)
def test_probe_settings_of_what_does_not_exist(service: LoadBalancerService, missing: str) -> None:
    service.put(SUB, "RG", "Front", body(http_probe("Health")))

    assert service.probe_settings(missing) is None
    assert not service.probe_exists(missing)
