"""VM and availability-set documents (domain/vm_spec.py, domain/availability_set_spec.py): defaults,
read-only fields and secrets dropped, the rules on what may not change, and the translation of a VM into
the one-instance scale set that runs it."""

from __future__ import annotations

from typing import Any

import pytest

from scaleset.domain.availability_set_spec import next_domains, validate_availability_set
from scaleset.domain.errors import ArmError
from scaleset.domain.scaleset_spec import validate_scale_set
from scaleset.domain.vm_spec import (
    availability_set_of,
    replace_extension,
    scale_set_body,
    validate_vm,
    validate_vm_extension,
    vm_error,
)

AS_ID = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/availabilitySets/web"


def vm(**properties: Any) -> dict[str, Any]:
    return {
        "location": "East US",
        "properties": {
            "storageProfile": {
                "imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "latest"},
                "dataDisks": [{"lun": 1, "createOption": "Empty", "diskSizeGB": 2}],
            },
            "osProfile": {"adminPassword": "hunter2", "customData": "ZWNobyBoaQ=="},
            **properties,
        },
    }


def test_defaults_and_secrets() -> None:
    document = validate_vm({**vm(provisioningState="Succeeded"), "id": "x"}, "web0", None)

    assert document["location"] == "eastus"
    assert document["properties"]["hardwareProfile"] == {"vmSize": "Standard_B1s"}
    assert document["properties"]["osProfile"] == {
        "computerName": "web0",
        "adminUsername": "azureuser",
        "customData": "ZWNobyBoaQ==",
    }
    assert "provisioningState" not in document["properties"]
    assert "id" not in document


def test_availability_set_is_fixed_at_creation() -> None:
    document = validate_vm(vm(availabilitySet={"id": AS_ID}), "web0", None)
    assert availability_set_of(document) == ("sub", "rg", "web")

    # A PUT that leaves it out keeps it (clients GET and PUT back); naming another one is refused.
    assert validate_vm(vm(), "web0", document)["properties"]["availabilitySet"] == {"id": AS_ID}
    with pytest.raises(ArmError) as moved:
        validate_vm(vm(availabilitySet={"id": AS_ID + "2"}), "web0", document)
    assert (moved.value.status, moved.value.code) == (409, "PropertyChangeNotAllowed")
    with pytest.raises(ArmError) as joined:
        validate_vm(vm(availabilitySet={"id": AS_ID}), "web0", validate_vm(vm(), "web0", None))
    assert joined.value.status == 409


@pytest.mark.parametrize(
    ("body", "target"),
    [
        ({**vm(availabilitySet={"id": AS_ID}), "zones": ["1"]}, "properties.availabilitySet"),
        (vm(availabilitySet={"id": "/not/an/id"}), "properties.availabilitySet.id"),
        ({"location": "mars", "properties": {}}, "location"),
        ({"location": "eastus"}, "properties"),
        (vm(storageProfile=None), "properties.storageProfile"),
        ({**vm(), "zones": ["1", "2"]}, "zones"),
    ],
)
def test_bad_vm_bodies(body: dict[str, Any], target: str) -> None:
    with pytest.raises(ArmError) as error:
        validate_vm(body, "web0", None)
    assert error.value.target == target
    assert 400 <= error.value.status < 500


def test_the_backing_scale_set_runs_the_vm() -> None:
    document = validate_vm(vm(), "web0", None)
    extension = validate_vm_extension({"location": "eastus", "properties": _script()}, "script")

    body = scale_set_body(document, [extension])
    stored = validate_scale_set(body, "web0", None)

    assert stored["sku"]["capacity"] == 1
    assert stored["properties"]["upgradePolicy"]["mode"] == "Automatic"
    profile = stored["properties"]["virtualMachineProfile"]
    assert profile["osProfile"]["computerNamePrefix"] == "web0"
    assert profile["osProfile"]["customData"] == "ZWNobyBoaQ=="
    assert profile["storageProfile"]["dataDisks"][0]["lun"] == 1
    assert [e["name"] for e in profile["extensionProfile"]["extensions"]] == ["script"]


def test_scale_set_errors_are_named_as_in_the_vm_body() -> None:
    document = validate_vm(vm(), "web0", None)
    document["properties"]["storageProfile"]["dataDisks"] = [{"lun": 99}]
    with pytest.raises(ArmError) as error:
        try:
            validate_scale_set(scale_set_body(document, []), "web0", None)
        except ArmError as raw:
            raise vm_error(raw) from None
    assert error.value.target == "properties.storageProfile.dataDisks[0].lun"
    assert vm_error(ArmError(400, "X", "m", "sku.name")).target == "properties.hardwareProfile.vmSize"


def _script() -> dict[str, Any]:
    return {"publisher": "Microsoft.Azure.Extensions", "type": "CustomScript", "typeHandlerVersion": "2.1"}


def test_extensions_replace_by_name_in_any_case() -> None:
    first = validate_vm_extension({"properties": _script()}, "Script")
    again = validate_vm_extension({"properties": {**_script(), "settings": {"a": 1}}}, "script")

    extensions, created = replace_extension([first], again)

    assert not created
    assert extensions == [{"name": "Script", "properties": again["properties"]}]
    with pytest.raises(ArmError) as error:
        validate_vm_extension({"properties": {**_script(), "typeHandlerVersion": "two"}}, "script")
    assert error.value.target == "properties.typeHandlerVersion"


def test_availability_set_defaults_and_ranges() -> None:
    document = validate_availability_set({"location": "eastus"}, "web", None)
    assert document["properties"] == {"platformUpdateDomainCount": 5, "platformFaultDomainCount": 2}
    assert document["sku"] == {"name": "Aligned"}

    for key, value in (("platformUpdateDomainCount", 21), ("platformFaultDomainCount", 0)):
        with pytest.raises(ArmError) as error:
            validate_availability_set({"location": "eastus", "properties": {key: value}}, "web", None)
        assert (error.value.status, error.value.target) == (400, f"properties.{key}")

    # A later PUT without the counts keeps them; a different count is refused.
    custom = validate_availability_set(
        {"location": "eastus", "properties": {"platformUpdateDomainCount": 20}}, "web", None
    )
    assert (
        validate_availability_set({"location": "eastus"}, "web", custom)["properties"][
            "platformUpdateDomainCount"
        ]
        == 20
    )
    with pytest.raises(ArmError) as changed:
        validate_availability_set(
            {"location": "eastus", "properties": {"platformFaultDomainCount": 3}}, "web", custom
        )
    assert changed.value.status == 409


def test_domains_round_robin_then_fill_gaps() -> None:
    placed: list[tuple[int, int]] = []
    for _ in range(7):
        placed.append(next_domains(placed, 5, 2))
    assert placed == [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0), (0, 1), (1, 0)]
    # After VMs in UD 2 and FD 0 left, the next one fills that gap.
    assert next_domains([(0, 1), (1, 1), (3, 0), (4, 1)], 5, 2) == (2, 0)
