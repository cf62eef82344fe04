"""Validation and normalisation of scale-set PUT and PATCH bodies (M-1, M-4, M-7, M-10, M-11).

Ranges and wording follow Azure (`azure-api.md` §2.2). Every refusal is checked on its status, its code
and its `target` (the property at fault), because that is what a client sees in the ARM envelope.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from scaleset.domain.errors import ArmError
from scaleset.domain.scaleset_spec import (
    DEFAULT_ROLLING_POLICY,
    image_request,
    merge_patch,
    model_of,
    models_differ,
    validate_scale_set,
)

Json = dict[str, Any]

NAME = "web"
ROLLING = "properties.upgradePolicy.rollingUpgradePolicy"
AUTO_OS = "properties.upgradePolicy.automaticOSUpgradePolicy"
IMAGE = "properties.virtualMachineProfile.storageProfile.imageReference"
PROBE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
    "Microsoft.Network/loadBalancers/lb/probes/http"
)
HEALTH_EXTENSION = {
    "name": "health",
    "properties": {
        "publisher": "Microsoft.ManagedServices",
        "type": "ApplicationHealthLinux",
        "typeHandlerVersion": "1.0",
        "settings": {"protocol": "http", "port": 8080, "requestPath": "/health"},
    },
}


def body(**properties: Any) -> Json:
    """A minimal valid PUT body; keyword arguments are merged into `properties`."""
    document: Json = {
        "location": "eastus",
        "sku": {"name": "Standard_B1s", "capacity": 3},
        "properties": {
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {
                        "publisher": "scaleset",
                        "offer": "webapp",
                        "sku": "stable",
                        "version": "1.0.0",
                    }
                }
            },
        },
    }
    document["properties"].update(properties)
    return document


def with_probe(document: Json) -> Json:
    document["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    return document


def with_health_extension(document: Json) -> Json:
    document["properties"]["virtualMachineProfile"]["extensionProfile"] = {
        "extensions": [copy.deepcopy(HEALTH_EXTENSION)]
    }
    return document


def rolling(policy: Json) -> Json:
    return with_probe(body(upgradePolicy={"mode": "Rolling", "rollingUpgradePolicy": policy}))


def image_of(document: Json) -> Json:
    result: Json = document["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]
    return result


def refused(document: Any, current: Json | None = None, name: str = NAME) -> ArmError:
    with pytest.raises(ArmError) as caught:
        validate_scale_set(document, name, current)
    return caught.value


def assert_invalid(error: ArmError, target: str) -> None:
    assert (error.status, error.code, error.target) == (400, "InvalidParameter", target)


def assert_change_refused(error: ArmError, target: str) -> None:
    assert (error.status, error.code, error.target) == (400, "PropertyChangeNotAllowed", target)


# -- ranges ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("maxBatchInstancePercent", 5, 100),
        ("maxUnhealthyInstancePercent", 5, 100),
        ("maxUnhealthyUpgradedInstancePercent", 0, 100),
    ],
)
def test_percentages_accept_their_bounds(key: str, low: int, high: int) -> None:
    """M-10: the 20 % figures come from rollingUpgradePolicy, within Azure's ranges."""
    for value in (low, high):
        stored = validate_scale_set(rolling({key: value}), NAME, None)
        assert stored["properties"]["upgradePolicy"]["rollingUpgradePolicy"][key] == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("maxBatchInstancePercent", 4),
        ("maxBatchInstancePercent", 101),
        ("maxBatchInstancePercent", 0),
        ("maxUnhealthyInstancePercent", 4),
        ("maxUnhealthyInstancePercent", 101),
        ("maxUnhealthyUpgradedInstancePercent", -1),
        ("maxUnhealthyUpgradedInstancePercent", 101),
    ],
)
def test_percentages_outside_their_range_are_refused(key: str, value: int) -> None:
    assert_invalid(refused(rolling({key: value})), f"{ROLLING}.{key}")


@pytest.mark.parametrize("grace", ["PT10M", "PT90M", "PT1H30M", "PT600S", "pt30m"])
def test_grace_period_bounds_are_accepted(grace: str) -> None:
    stored = validate_scale_set(
        body(automaticRepairsPolicy={"enabled": True, "gracePeriod": grace}), NAME, None
    )
    assert stored["properties"]["automaticRepairsPolicy"] == {"enabled": True, "gracePeriod": grace.upper()}


@pytest.mark.parametrize("grace", ["PT9M59S", "PT5M", "PT0S", "PT90M1S", "PT1H31M", "P1D", "ten minutes", ""])
def test_grace_period_outside_its_range_or_malformed_is_refused(grace: str) -> None:
    error = refused(body(automaticRepairsPolicy={"enabled": True, "gracePeriod": grace}))
    assert_invalid(error, "properties.automaticRepairsPolicy.gracePeriod")


def test_pause_time_must_be_an_iso_duration() -> None:
    assert_invalid(
        refused(rolling({"pauseTimeBetweenBatches": "5 seconds"})), f"{ROLLING}.pauseTimeBetweenBatches"
    )
    stored = validate_scale_set(rolling({"pauseTimeBetweenBatches": "pt5s"}), NAME, None)
    assert stored["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["pauseTimeBetweenBatches"] == "PT5S"


@pytest.mark.parametrize(("capacity", "ok"), [(0, True), (1000, True), (-1, False), (1001, False)])
def test_capacity_range(capacity: int, ok: bool) -> None:
    document = body()
    document["sku"]["capacity"] = capacity
    if ok:
        assert validate_scale_set(document, NAME, None)["sku"]["capacity"] == capacity
    else:
        assert_invalid(refused(document), "sku.capacity")


@pytest.mark.parametrize(("count", "ok"), [(1, True), (5, True), (0, False), (6, False)])
def test_platform_fault_domain_count_range(count: int, ok: bool) -> None:
    document = body(platformFaultDomainCount=count)
    if ok:
        assert validate_scale_set(document, NAME, None)["properties"]["platformFaultDomainCount"] == count
    else:
        assert_invalid(refused(document), "properties.platformFaultDomainCount")


# -- types -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, "20", "twenty", 20.0, 20.5, [20], {"value": 20}])
def test_percentages_must_be_integers_and_not_booleans(value: Any) -> None:
    """JSON true is not a number on the wire, although Python's bool is an int."""
    error = refused(rolling({"maxBatchInstancePercent": value}))
    assert_invalid(error, f"{ROLLING}.maxBatchInstancePercent")


@pytest.mark.parametrize("value", [True, "3", 3.0])
def test_capacity_must_be_an_integer_and_not_a_boolean(value: Any) -> None:
    document = body()
    document["sku"]["capacity"] = value
    assert_invalid(refused(document), "sku.capacity")


def test_fault_domain_count_true_is_not_one() -> None:
    assert_invalid(refused(body(platformFaultDomainCount=True)), "properties.platformFaultDomainCount")


@pytest.mark.parametrize("value", ["yes", 1, 0, "", "TRUE!"])
def test_policy_booleans_refuse_what_is_not_true_or_false(value: Any) -> None:
    assert_invalid(refused(rolling({"maxSurge": value})), f"{ROLLING}.maxSurge")


@pytest.mark.parametrize(
    ("section", "target"),
    [
        ({"upgradePolicy": "Manual"}, "properties.upgradePolicy"),
        ({"upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": []}}, ROLLING),
        ({"automaticRepairsPolicy": True}, "properties.automaticRepairsPolicy"),
        ({"upgradePolicy": {"mode": "Sometimes"}}, "properties.upgradePolicy.mode"),
        ({"upgradePolicy": {"mode": 3}}, "properties.upgradePolicy.mode"),
        ({"orchestrationMode": "Flexible"}, "properties.orchestrationMode"),
        ({"overprovision": "maybe"}, "properties.overprovision"),
    ],
)
def test_wrong_shapes_name_the_property_at_fault(section: Json, target: str) -> None:
    document = with_probe(body(**section))
    assert_invalid(refused(document), target)


def test_body_and_properties_must_be_objects() -> None:
    assert_invalid(refused([1, 2]), "body")
    document = body()
    document["properties"] = "x"
    assert_invalid(refused(document), "properties")


def test_unknown_policy_key_is_refused_with_its_path() -> None:
    assert_invalid(refused(rolling({"maxBatchPercent": 10})), f"{ROLLING}.maxBatchPercent")


@pytest.mark.parametrize("field", ["publisher", "offer", "sku", "version"])
def test_image_reference_needs_every_part(field: str) -> None:
    document = body()
    del image_of(document)[field]
    assert_invalid(refused(document), f"{IMAGE}.{field}")


def test_managed_image_ids_are_refused_only_gallery_images_are_taken() -> None:
    document = body()
    image_of(document)["id"] = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/x"
    assert_invalid(refused(document), f"{IMAGE}.id")


def test_unknown_location_and_zone_problems() -> None:
    error = refused({**body(), "location": "atlantis"})
    assert (error.status, error.code, error.target) == (
        400,
        "LocationNotAvailableForResourceType",
        "location",
    )
    error = refused({**body(), "location": "westus", "zones": ["1"]})
    assert (error.status, error.code, error.target) == (400, "ZonesNotSupported", "zones")
    assert_invalid(refused({**body(), "zones": ["4"]}), "zones[0]")
    assert_invalid(refused({**body(), "zones": ["1", "1"]}), "zones[1]")


def test_zones_as_numbers_are_accepted_and_sorted() -> None:
    stored = validate_scale_set({**body(), "zones": [3, "1"]}, NAME, None)
    assert stored["zones"] == ["1", "3"]


def test_invalid_set_name_is_refused() -> None:
    assert_invalid(refused(body(), name="-bad"), "name")


# -- case-insensitive keys and string booleans -------------------------------------------------------


def test_policy_keys_are_case_insensitive_and_string_booleans_accepted() -> None:
    """Azure's own ARM samples write `"MaxSurge": "true"` (azure-api.md §2.2)."""
    document = with_probe(
        body(
            upgradePolicy={
                "Mode": "rolling",
                "RollingUpgradePolicy": {
                    "MaxBatchInstancePercent": 10,
                    "maxunhealthyinstancepercent": 30,
                    "MaxSurge": "true",
                    "EnableCrossZoneUpgrade": "False",
                },
            }
        )
    )

    policy = validate_scale_set(document, NAME, None)["properties"]["upgradePolicy"]

    assert policy == {
        "mode": "Rolling",
        "rollingUpgradePolicy": {
            "maxBatchInstancePercent": 10,
            "maxUnhealthyInstancePercent": 30,
            "maxSurge": True,
            "enableCrossZoneUpgrade": False,
        },
    }


def test_automatic_os_upgrade_policy_keys_and_string_booleans() -> None:
    """M-7: `az vmss update --set ...enableAutomaticOSUpgrade=true` arrives as a string."""
    document = body(
        upgradePolicy={
            "mode": "Automatic",
            "AutomaticOSUpgradePolicy": {
                "EnableAutomaticOSUpgrade": "TRUE",
                "disableAutomaticRollback": False,
            },
        }
    )
    image_of(with_probe(document))["version"] = "latest"

    policy = validate_scale_set(document, NAME, None)["properties"]["upgradePolicy"]

    assert policy == {
        "mode": "Automatic",
        "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True, "disableAutomaticRollback": False},
    }


def test_two_spellings_of_one_policy_store_the_same_document() -> None:
    plain = rolling({"maxBatchInstancePercent": 10, "maxSurge": True})
    shouted = rolling({"MAXBATCHINSTANCEPERCENT": 10, "maxsurge": "true"})
    shouted["properties"]["upgradePolicy"]["mode"] = "ROLLING"

    assert validate_scale_set(plain, NAME, None) == validate_scale_set(shouted, NAME, None)


# -- read-only fields and defaults -------------------------------------------------------------------


def test_read_only_fields_are_ignored_on_input() -> None:
    """A client may send back what it read (azure-api.md: read-only fields ignored on input)."""
    echoed = body()
    echoed.update(
        {
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/x",
            "name": "some-other-name",
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            "etag": '"3"',
        }
    )
    echoed["properties"].update(
        {
            "provisioningState": "Succeeded",
            "uniqueId": "6a1f9b6e-0000-0000-0000-000000000000",
            "timeCreated": "2024-01-01T00:00:00Z",
        }
    )
    echoed["properties"]["virtualMachineProfile"]["timeCreated"] = "2024-01-01T00:00:00Z"
    image_of(echoed)["exactVersion"] = "1.0.0"

    stored = validate_scale_set(echoed, NAME, None)

    assert stored == validate_scale_set(body(), NAME, None)
    for key in ("id", "name", "type", "etag"):
        assert key not in stored
    for key in ("provisioningState", "uniqueId", "timeCreated"):
        assert key not in stored["properties"]
    assert "exactVersion" not in image_of(stored)


def test_defaults_are_filled_in() -> None:
    stored = validate_scale_set(body(), "frontend-pool", None)
    properties = stored["properties"]
    profile = properties["virtualMachineProfile"]

    assert properties["upgradePolicy"] == {"mode": "Manual"}
    assert properties["platformFaultDomainCount"] == 5
    assert properties["orchestrationMode"] == "Uniform"
    assert profile["osProfile"]["computerNamePrefix"] == "frontend-"
    assert profile["osProfile"]["adminUsername"] == "azureuser"
    assert profile["storageProfile"]["osDisk"] == {"createOption": "FromImage"}
    assert profile["storageProfile"]["dataDisks"] == []
    assert stored["zones"] == []
    assert stored["sku"] == {"name": "Standard_B1s", "tier": "Standard", "capacity": 3}


def test_sku_capacity_defaults_to_two_on_create() -> None:
    document = body()
    document["sku"] = {"name": "Standard_B1s"}
    assert validate_scale_set(document, NAME, None)["sku"]["capacity"] == 2


def test_a_given_computer_name_prefix_is_kept() -> None:
    document = body()
    document["properties"]["virtualMachineProfile"]["osProfile"] = {"computerNamePrefix": "app"}
    stored = validate_scale_set(document, "frontend-pool", None)
    assert stored["properties"]["virtualMachineProfile"]["osProfile"]["computerNamePrefix"] == "app"


def test_location_is_normalised() -> None:
    assert validate_scale_set({**body(), "location": "East US"}, NAME, None)["location"] == "eastus"


def test_default_rolling_policy_is_azures() -> None:
    assert DEFAULT_ROLLING_POLICY["maxBatchInstancePercent"] == 20
    assert DEFAULT_ROLLING_POLICY["maxUnhealthyInstancePercent"] == 20
    assert DEFAULT_ROLLING_POLICY["maxUnhealthyUpgradedInstancePercent"] == 20


# -- health sources and automatic OS upgrade ----------------------------------------------------------


def test_rolling_mode_needs_a_health_source() -> None:
    """M-11: Rolling needs a load-balancer probe or the Application Health extension."""
    assert_invalid(refused(body(upgradePolicy={"mode": "Rolling"})), "properties.upgradePolicy.mode")

    by_probe = validate_scale_set(with_probe(body(upgradePolicy={"mode": "Rolling"})), NAME, None)
    by_extension = validate_scale_set(
        with_health_extension(body(upgradePolicy={"mode": "Rolling"})), NAME, None
    )

    assert by_probe["properties"]["upgradePolicy"]["mode"] == "Rolling"
    assert by_extension["properties"]["upgradePolicy"]["mode"] == "Rolling"


def test_both_health_sources_at_once_are_refused() -> None:
    document = with_health_extension(with_probe(body()))
    assert_invalid(refused(document), "properties.virtualMachineProfile.extensionProfile")


def test_a_malformed_probe_reference_is_refused() -> None:
    document = body()
    document["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": "probe-1"}}
    assert_invalid(refused(document), "properties.virtualMachineProfile.networkProfile.healthProbe.id")


@pytest.mark.parametrize("enable", [True, "true"])
def test_automatic_os_upgrade_requires_latest(enable: Any) -> None:
    """M-7: enableAutomaticOSUpgrade needs imageReference.version = 'latest'."""
    document = with_probe(
        body(upgradePolicy={"automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": enable}})
    )

    assert_invalid(refused(document), f"{AUTO_OS}.enableAutomaticOSUpgrade")

    image_of(document)["version"] = "Latest"
    stored = validate_scale_set(document, NAME, None)
    assert stored["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"] == {
        "enableAutomaticOSUpgrade": True
    }


def test_automatic_os_upgrade_off_allows_a_pinned_version() -> None:
    document = body(upgradePolicy={"automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": "false"}})
    assert validate_scale_set(document, NAME, None)["properties"]["upgradePolicy"][
        "automaticOSUpgradePolicy"
    ] == {"enableAutomaticOSUpgrade": False}


# -- PATCH and what may not change ---------------------------------------------------------------------


@pytest.fixture
def current() -> Json:
    return validate_scale_set({**body(), "zones": ["1", "2", "3"]}, NAME, None)


def patched(current: Json, patch: Json) -> Json:
    return validate_scale_set(merge_patch(current, patch), NAME, current)


def test_patch_changes_only_what_it_names(current: Json) -> None:
    after = patched(current, {"sku": {"capacity": 7}, "tags": {"team": "web"}})

    assert after["sku"] == {**current["sku"], "capacity": 7}
    assert after["tags"] == {"team": "web"}
    assert after["properties"] == current["properties"]
    assert after["zones"] == current["zones"]


def test_patch_merges_nested_objects(current: Json) -> None:
    after = patched(
        current,
        {
            "properties": {
                "virtualMachineProfile": {"storageProfile": {"imageReference": {"version": "1.1.0"}}}
            }
        },
    )

    assert image_of(after) == {**image_of(current), "version": "1.1.0"}
    assert image_request(after).urn == "scaleset:webapp:stable:1.1.0"


def test_patch_null_leaves_a_value_and_a_list_replaces(current: Json) -> None:
    with_disks = patched(
        current,
        {
            "properties": {
                "virtualMachineProfile": {"storageProfile": {"dataDisks": [{"lun": 1}, {"lun": 0}]}}
            }
        },
    )
    assert [
        d["lun"] for d in with_disks["properties"]["virtualMachineProfile"]["storageProfile"]["dataDisks"]
    ] == [0, 1]

    after = patched(
        with_disks,
        {
            "sku": None,
            "properties": {"virtualMachineProfile": {"storageProfile": {"dataDisks": [{"lun": 2}]}}},
        },
    )
    assert after["sku"] == with_disks["sku"]
    assert [
        d["lun"] for d in after["properties"]["virtualMachineProfile"]["storageProfile"]["dataDisks"]
    ] == [2]


def test_merge_patch_does_not_change_its_inputs(current: Json) -> None:
    before = copy.deepcopy(current)
    patch = {"properties": {"upgradePolicy": {"mode": "Automatic"}}}

    merge_patch(current, patch)

    assert current == before
    assert patch == {"properties": {"upgradePolicy": {"mode": "Automatic"}}}


def test_patch_body_must_be_an_object(current: Json) -> None:
    with pytest.raises(ArmError) as caught:
        merge_patch(current, ["sku"])
    assert_invalid(caught.value, "body")


def test_patch_can_enable_automatic_os_upgrade_with_latest(current: Json) -> None:
    """M-7: enabled through PATCH as well as PUT."""
    after = patched(
        current,
        {
            "properties": {
                "upgradePolicy": {"automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}},
                "virtualMachineProfile": {
                    "storageProfile": {"imageReference": {"version": "latest"}},
                    "networkProfile": {"healthProbe": {"id": PROBE_ID}},
                },
            }
        },
    )
    assert (
        after["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"]["enableAutomaticOSUpgrade"] is True
    )

    error = refused(
        merge_patch(
            current,
            {
                "properties": {
                    "upgradePolicy": {"automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}}
                }
            },
        ),
        current=current,
    )
    assert_invalid(error, f"{AUTO_OS}.enableAutomaticOSUpgrade")


def test_location_cannot_change(current: Json) -> None:
    assert_change_refused(refused(merge_patch(current, {"location": "westeurope"}), current), "location")
    # The same region spelled differently is no change.
    assert patched(current, {"location": "East US"})["location"] == "eastus"


def test_zones_cannot_change(current: Json) -> None:
    assert_change_refused(refused(merge_patch(current, {"zones": ["1"]}), current), "zones")
    assert patched(current, {"zones": ["3", "2", "1"]})["zones"] == ["1", "2", "3"]


def test_a_put_without_zones_on_a_zonal_set_is_a_change(current: Json) -> None:
    assert_change_refused(refused(body(), current), "zones")


def test_fault_domain_count_cannot_change(current: Json) -> None:
    error = refused(merge_patch(current, {"properties": {"platformFaultDomainCount": 3}}), current)
    assert_change_refused(error, "properties.platformFaultDomainCount")


@pytest.mark.parametrize("field", ["publisher", "offer"])
def test_image_publisher_and_offer_cannot_change(current: Json, field: str) -> None:
    patch = {
        "properties": {"virtualMachineProfile": {"storageProfile": {"imageReference": {field: "other"}}}}
    }
    assert_change_refused(refused(merge_patch(current, patch), current), f"{IMAGE}.{field}")


def test_image_sku_and_version_may_change_and_publisher_case_is_no_change(current: Json) -> None:
    """M-2: changing the image version or SKU is how an OS update starts."""
    patch = {
        "properties": {
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "ScaleSet", "sku": "edge", "version": "2.0.0"}
                }
            }
        }
    }
    after = patched(current, patch)
    assert image_request(after).urn == "ScaleSet:webapp:edge:2.0.0"


def test_a_put_without_properties_keeps_the_current_model(current: Json) -> None:
    document = {"location": "eastus", "sku": {"capacity": 4}, "zones": ["1", "2", "3"]}
    after = validate_scale_set(document, NAME, current)
    assert model_of(after) == model_of(current)
    assert after["sku"]["capacity"] == 4


def test_create_without_properties_is_refused() -> None:
    assert_invalid(refused({"location": "eastus", "sku": {"capacity": 1}}), "properties")


# -- what counts as a new model (M-4) ------------------------------------------------------------------


def test_image_version_change_is_a_new_model(current: Json) -> None:
    after = patched(
        current,
        {
            "properties": {
                "virtualMachineProfile": {"storageProfile": {"imageReference": {"version": "1.1.0"}}}
            }
        },
    )
    assert models_differ(current, after)


def test_custom_data_change_is_a_new_model(current: Json) -> None:
    after = patched(
        current, {"properties": {"virtualMachineProfile": {"osProfile": {"customData": "ZWNobyBoaQ=="}}}}
    )
    assert models_differ(current, after)


@pytest.mark.parametrize(
    "patch",
    [
        {"tags": {"owner": "ops"}},
        {"sku": {"capacity": 9}},
        {"sku": {"capacity": 0}},
        {"properties": {"upgradePolicy": {"mode": "Automatic"}}},
        {"properties": {"provisioningState": "Failed"}},
        {
            "properties": {
                "virtualMachineProfile": {"storageProfile": {"imageReference": {"exactVersion": "9.9.9"}}}
            }
        },
    ],
)
def test_tags_capacity_and_policy_changes_are_not_a_new_model(current: Json, patch: Json) -> None:
    assert not models_differ(current, patched(current, patch))


def test_custom_data_must_be_base64() -> None:
    document = body()
    document["properties"]["virtualMachineProfile"]["osProfile"] = {"customData": "not base64!"}
    assert_invalid(refused(document), "properties.virtualMachineProfile.osProfile.customData")


def test_zone_balance_needs_more_than_one_zone() -> None:
    document = {**body(zoneBalance="true"), "zones": ["1"]}
    assert_invalid(refused(document), "properties.zoneBalance")
    balanced = validate_scale_set({**body(zoneBalance="true"), "zones": ["1", "2"]}, NAME, None)
    assert balanced["properties"]["zoneBalance"] is True


@pytest.mark.parametrize(
    ("disks", "target"),
    [
        ([{"lun": 0}, {"lun": 0}], "dataDisks[1].lun"),
        ([{"lun": 64}], "dataDisks[0].lun"),
        ([{"lun": True}], "dataDisks[0].lun"),
        ([{"lun": 0, "diskSizeGB": 0}], "dataDisks[0].diskSizeGB"),
        ([{"lun": 0, "createOption": "Attach"}], "dataDisks[0].createOption"),
        ({"lun": 0}, "dataDisks"),
    ],
)
def test_data_disks_are_checked(disks: Any, target: str) -> None:
    document = body()
    document["properties"]["virtualMachineProfile"]["storageProfile"]["dataDisks"] = disks
    assert_invalid(refused(document), f"properties.virtualMachineProfile.storageProfile.{target}")
