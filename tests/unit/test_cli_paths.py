"""The CLI's pure helpers: `--set` semantics, instance ids, URNs, tags, argv shaping, bodies."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from scaleset.cli.commands_vmss import (
    build_vmss_body,
    default_computer_name_prefix,
    instance_addresses,
    power_state,
    resource_group_of,
)
from scaleset.cli.paths import (
    ImageUrn,
    PathError,
    apply_set,
    apply_sets,
    normalize_argv,
    parse_instance_ids,
    parse_path,
    parse_set_expression,
    parse_tags,
    parse_urn,
    parse_value,
    version_key,
)


def scale_set() -> dict[str, Any]:
    return {
        "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web",
        "name": "web",
        "location": "eastus",
        "sku": {"name": "Standard_B1s", "tier": "Standard", "capacity": 2},
        "tags": {"owner": "ops"},
        "properties": {
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "1.0.0"},
                    "dataDisks": [{"lun": 0, "diskSizeGB": 1}, {"lun": 1, "diskSizeGB": 2}],
                },
                "extensionProfile": {"extensions": [{"name": "health", "properties": {"settings": {}}}]},
            },
        },
    }


# --- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        ("upgradePolicy.mode", ["upgradePolicy", "mode"]),
        ("a.b[0].c", ["a", "b", 0, "c"]),
        ("a[1][2]", ["a", 1, 2]),
        ("a[-1].b", ["a", -1, "b"]),
        ('tags["app.tier"]', ["tags", "app.tier"]),
        ("tags['x']", ["tags", "x"]),
        ("sku", ["sku"]),
    ],
)
def test_parse_path(path: str, keys: list[Any]) -> None:
    assert parse_path(path) == keys


@pytest.mark.parametrize("path", ["", "a..b", "a.", ".a", "a[0", "a[x]", "a[0]b", "a[]"])
def test_parse_path_rejects(path: str) -> None:
    with pytest.raises(PathError):
        parse_path(path)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("true", True),
        ("null", None),
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ('"quoted"', "quoted"),
        ("Rolling", "Rolling"),
        ("1.1.0", "1.1.0"),
        ("PT10S", "PT10S"),
        ("", ""),
    ],
)
def test_parse_value_is_json_when_it_parses(text: str, value: Any) -> None:
    assert parse_value(text) == value


def test_parse_set_expression_splits_on_first_equals() -> None:
    assert parse_set_expression("tags.query=a=b") == ("tags.query", "a=b")
    assert parse_set_expression(" sku.capacity =3") == ("sku.capacity", 3)
    for bad in ("noequals", "=3"):
        with pytest.raises(PathError):
            parse_set_expression(bad)


def test_set_under_properties_by_default() -> None:
    resource = apply_set(scale_set(), "upgradePolicy.mode", "Rolling")
    assert resource["properties"]["upgradePolicy"]["mode"] == "Rolling"
    assert "upgradePolicy" not in resource


@pytest.mark.parametrize(
    ("expression", "where", "value"),
    [
        ("sku.capacity=3", ("sku", "capacity"), 3),
        ("tags.env=prod", ("tags", "env"), "prod"),
        ('zones=["1","2"]', ("zones",), ["1", "2"]),
        ("location=westus", ("location",), "westus"),
        ('identity={"type":"None"}', ("identity",), {"type": "None"}),
        ("plan.name=basic", ("plan", "name"), "basic"),
        ("properties.overprovision=false", ("properties", "overprovision"), False),
    ],
)
def test_set_top_level_keys(expression: str, where: tuple[str, ...], value: Any) -> None:
    resource = apply_sets(scale_set(), [expression])
    node: Any = resource
    for key in where:
        node = node[key]
    assert node == value
    assert where[0] not in resource["properties"] or where[0] == "properties"


def test_set_nested_image_version_keeps_siblings() -> None:
    resource = apply_sets(scale_set(), ["virtualMachineProfile.storageProfile.imageReference.version=1.1.0"])
    reference = resource["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]
    assert reference == {"publisher": "p", "offer": "o", "sku": "s", "version": "1.1.0"}


def test_set_creates_missing_objects() -> None:
    resource = apply_sets(scale_set(), ["upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent=200"])
    assert resource["properties"]["upgradePolicy"] == {
        "mode": "Manual",
        "rollingUpgradePolicy": {"maxBatchInstancePercent": 200},
    }
    bare = apply_set({"location": "eastus"}, "upgradePolicy.mode", "Automatic")
    assert bare == {"location": "eastus", "properties": {"upgradePolicy": {"mode": "Automatic"}}}


def test_set_list_indices() -> None:
    resource = apply_sets(
        scale_set(),
        [
            "virtualMachineProfile.storageProfile.dataDisks[1].diskSizeGB=8",
            "virtualMachineProfile.storageProfile.dataDisks[-2].lun=5",
            'virtualMachineProfile.extensionProfile.extensions[0].properties.settings={"port": 8080}',
        ],
    )
    profile = resource["properties"]["virtualMachineProfile"]
    assert profile["storageProfile"]["dataDisks"] == [
        {"lun": 5, "diskSizeGB": 1},
        {"lun": 1, "diskSizeGB": 8},
    ]
    assert profile["extensionProfile"]["extensions"][0]["properties"]["settings"] == {"port": 8080}


def test_set_replaces_a_whole_list_element() -> None:
    resource = apply_sets(scale_set(), ['virtualMachineProfile.storageProfile.dataDisks[0]={"lun": 9}'])
    assert resource["properties"]["virtualMachineProfile"]["storageProfile"]["dataDisks"][0] == {"lun": 9}


def test_set_matches_existing_keys_case_insensitively() -> None:
    resource = apply_sets(scale_set(), ["upgradepolicy.MODE=Automatic", "SKU.capacity=4"])
    assert resource["properties"]["upgradePolicy"] == {"mode": "Automatic"}
    assert resource["sku"]["capacity"] == 4
    assert "upgradepolicy" not in resource["properties"]


@pytest.mark.parametrize(
    "expression",
    [
        "virtualMachineProfile.storageProfile.dataDisks[2].lun=1",  # out of range
        "virtualMachineProfile.storageProfile.dataDisks.lun=1",  # a list is not an object
        "upgradePolicy[0]=1",  # an object is not a list
        "upgradePolicy.mode.x=1",  # a string is not an object
    ],
)
def test_set_errors(expression: str) -> None:
    resource = scale_set()
    before = copy.deepcopy(resource)
    with pytest.raises(PathError):
        apply_sets(resource, [expression])
    assert resource["sku"] == before["sku"]


def test_sets_apply_in_order() -> None:
    resource = apply_sets(scale_set(), ["tags.a=1", "tags.a=2", "tags={}", "tags.b=x"])
    assert resource["tags"] == {"b": "x"}


# --- instance ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "ids"),
    [
        (["0"], ["0"]),
        (["0", "1", "2"], ["0", "1", "2"]),
        (["0,1", "2"], ["0", "1", "2"]),
        (["3 4"], ["3", "4"]),
        (["007", "7"], ["7"]),
        (["/subscriptions/s/.../virtualMachineScaleSets/web/virtualMachines/12"], ["12"]),
        (["*"], None),
    ],
)
def test_parse_instance_ids(values: list[str], ids: list[str] | None) -> None:
    assert parse_instance_ids(values) == ids


@pytest.mark.parametrize("values", [[], [""], ["a"], ["-1"], ["1.5"], ["*", "1"], ["٣"]])
def test_parse_instance_ids_rejects(values: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_instance_ids(values)


# --- URNs, versions, tags --------------------------------------------------------------------


def test_parse_urn() -> None:
    urn = parse_urn("scaleset:webapp:stable:1.0.0")
    assert urn == ImageUrn("scaleset", "webapp", "stable", "1.0.0")
    assert str(urn) == "scaleset:webapp:stable:1.0.0"
    assert urn.image_reference() == {
        "publisher": "scaleset",
        "offer": "webapp",
        "sku": "stable",
        "version": "1.0.0",
    }
    assert parse_urn("p:o:s:latest").version == "latest"


@pytest.mark.parametrize(
    ("urn", "message"),
    [
        ("p:o:s", "4 parts"),
        ("p:o:s:v:x", "4 parts"),
        ("", "4 parts"),
        ("p::s:1", "offer is empty"),
        ("p:o:s: ", "version is empty"),
        ("p/x:o:s:1", "publisher contains"),
        ("p:o:s k:1", "sku contains"),
    ],
)
def test_parse_urn_errors(urn: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_urn(urn)


def test_version_key_orders_numerically() -> None:
    versions = ["1.10.0", "1.9.2", "1.0.0", "2.0.0", "1.9.10"]
    assert sorted(versions, key=version_key) == ["1.0.0", "1.9.2", "1.9.10", "1.10.0", "2.0.0"]


def test_parse_tags() -> None:
    assert parse_tags(["env=prod", "team=blue", "flag", "q=a=b"]) == {
        "env": "prod",
        "team": "blue",
        "flag": "",
        "q": "a=b",
    }
    with pytest.raises(ValueError):
        parse_tags(["=x"])


# --- argv ------------------------------------------------------------------------------------


def test_normalize_argv_moves_global_options_first() -> None:
    assert normalize_argv(["vmss", "list", "-o", "table", "--endpoint=http://h:1"]) == [
        "-o",
        "table",
        "--endpoint=http://h:1",
        "vmss",
        "list",
    ]
    assert normalize_argv(["group", "list", "-otsv", "--token", "-abc"]) == [
        "-otsv",
        "--token",
        "-abc",
        "group",
        "list",
    ]


def test_normalize_argv_expands_multi_value_options() -> None:
    argv = [
        "vmss",
        "create",
        "--zones",
        "1",
        "2",
        "3",
        "--image",
        "p:o:s:1",
        "--data-disk-sizes-gb",
        "1",
        "2",
    ]
    assert normalize_argv(argv) == [
        "vmss",
        "create",
        *["--zones", "1", "--zones", "2", "--zones", "3"],
        *["--image", "p:o:s:1"],
        *["--data-disk-sizes-gb", "1", "--data-disk-sizes-gb", "2"],
    ]
    assert normalize_argv(["vmss", "stop", "--instance-ids", "0", "1", "-o", "table"]) == [
        *["-o", "table", "vmss", "stop"],
        *["--instance-ids", "0", "--instance-ids", "1"],
    ]
    assert normalize_argv(["vmss", "update", "--set", "a=1", "b=2"]) == [
        *["vmss", "update", "--set", "a=1", "--set", "b=2"],
    ]


def test_normalize_argv_leaves_serve_and_double_dash_alone() -> None:
    assert normalize_argv(["serve", "-o", "x", "--tags", "a", "b"]) == [
        "serve",
        "-o",
        "x",
        "--tags",
        "a",
        "b",
    ]
    assert normalize_argv(["--debug", "serve", "--port", "1"]) == ["--debug", "serve", "--port", "1"]
    assert normalize_argv(["group", "create", "--", "-o", "x"]) == ["group", "create", "--", "-o", "x"]
    assert normalize_argv(["vmss", "stop", "--instance-ids"]) == ["vmss", "stop", "--instance-ids"]


# --- bodies and table helpers ----------------------------------------------------------------


def test_build_vmss_body() -> None:
    body = build_vmss_body(
        location="eastus",
        image=parse_urn("p:o:s:1.0.0"),
        instance_count=3,
        zones=["1", "2"],
        platform_fault_domain_count=1,
        upgrade_policy_mode="Automatic",
        data_disk_sizes_gb=[1, 4],
        computer_name_prefix="web",
        admin_username="ops",
    )
    assert body == {
        "location": "eastus",
        "sku": {"name": "Standard_B1s", "tier": "Standard", "capacity": 3},
        "zones": ["1", "2"],
        "properties": {
            "upgradePolicy": {"mode": "Automatic"},
            "platformFaultDomainCount": 1,
            "virtualMachineProfile": {
                "osProfile": {"computerNamePrefix": "web", "adminUsername": "ops"},
                "storageProfile": {
                    "imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "1.0.0"},
                    "osDisk": {"createOption": "FromImage"},
                    "dataDisks": [
                        {"lun": 0, "diskSizeGB": 1, "createOption": "Empty"},
                        {"lun": 1, "diskSizeGB": 4, "createOption": "Empty"},
                    ],
                },
            },
        },
    }


def test_build_vmss_body_minimal() -> None:
    body = build_vmss_body(location="eastus", image=parse_urn("p:o:s:latest"), computer_name_prefix="x")
    assert "zones" not in body
    assert "platformFaultDomainCount" not in body["properties"]
    assert "dataDisks" not in body["properties"]["virtualMachineProfile"]["storageProfile"]
    assert body["properties"]["upgradePolicy"] == {"mode": "Manual"}
    assert body["sku"]["capacity"] == 2


def test_default_computer_name_prefix() -> None:
    assert default_computer_name_prefix("web") == "web"
    assert default_computer_name_prefix("my_scale.set-with-long-name") == "myscalese"
    assert default_computer_name_prefix("___") == "vmss"


def test_instance_addresses_from_network_interfaces() -> None:
    base = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web"
    nics = [
        {
            "id": f"{base}/virtualMachines/10/networkInterfaces/nic",
            "properties": {
                "ipConfigurations": [
                    {"properties": {"primary": False, "privateIPAddress": "10.0.0.9"}},
                    {"properties": {"primary": True, "privateIPAddress": "127.0.1.12"}},
                ]
            },
        },
        {
            "id": "nic-2",
            "properties": {
                "virtualMachine": {"id": f"{base}/virtualMachines/2"},
                "ipConfigurations": [{"properties": {"privateIPAddress": "127.0.1.4"}}],
            },
        },
    ]
    assert instance_addresses(nics) == [
        {"instanceId": "2", "address": "127.0.1.4"},
        {"instanceId": "10", "address": "127.0.1.12"},
    ]


def test_table_helpers() -> None:
    assert resource_group_of(scale_set()) == "rg"
    assert resource_group_of({"name": "x"}) is None
    vm = {
        "properties": {
            "instanceView": {
                "statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/stopped"}]
            }
        }
    }
    assert power_state(vm) == "stopped"
    assert power_state({"properties": {}}) is None
