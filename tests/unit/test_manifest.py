from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaleset.catalog.manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    ImageManifest,
    ManifestError,
    parse_image_manifest,
    read_image_manifest,
)

# The example from docs/images.md.
DOCUMENTED = {
    "manifestVersion": 1,
    "osType": "Linux",
    "osName": "scaleset-webapp",
    "osVersion": "1.0.0",
    "entrypoint": ["python3", "app.py"],
    "ports": [8080],
    "automaticOSUpgradeSupported": True,
    "environment": {"GREETING": "hello"},
}
MINIMAL = {"manifestVersion": 1, "osType": "Linux", "entrypoint": ["./run"]}


def with_field(**changes: object) -> dict[str, object]:
    return {**DOCUMENTED, **changes}


def test_documented_example_parses() -> None:
    manifest = parse_image_manifest(DOCUMENTED)
    assert manifest == ImageManifest(
        entrypoint=("python3", "app.py"),
        ports=(8080,),
        os_type="Linux",
        os_name="scaleset-webapp",
        os_version="1.0.0",
        automatic_os_upgrade_supported=True,
        environment={"GREETING": "hello"},
    )


def test_optional_fields_have_defaults() -> None:
    manifest = parse_image_manifest(MINIMAL)
    assert manifest.ports == ()
    assert manifest.os_name == "unknown"
    assert manifest.os_version == ""
    assert manifest.automatic_os_upgrade_supported is False
    assert dict(manifest.environment) == {}


def test_empty_ports_are_allowed() -> None:
    assert parse_image_manifest(with_field(ports=[])).ports == ()


@pytest.mark.parametrize("os_type", ["linux", "LINUX", "Linux"])
def test_os_type_is_case_insensitive_and_canonical(os_type: str) -> None:
    assert parse_image_manifest(with_field(osType=os_type)).os_type == "Linux"


def test_to_json_round_trips() -> None:
    manifest = parse_image_manifest(DOCUMENTED)
    assert parse_image_manifest(json.loads(json.dumps(manifest.to_json()))) == manifest


def test_manifest_is_immutable_and_hashable() -> None:
    manifest = parse_image_manifest(DOCUMENTED)
    with pytest.raises(TypeError):
        manifest.environment["GREETING"] = "changed"  # type: ignore[index]
    assert hash(manifest) == hash(parse_image_manifest(DOCUMENTED))


@pytest.mark.parametrize(
    ("data", "target"),
    [
        (with_field(entryPoint=["x"]), "entryPoint"),
        ({k: v for k, v in DOCUMENTED.items() if k != "manifestVersion"}, "manifestVersion"),
        ({k: v for k, v in DOCUMENTED.items() if k != "osType"}, "osType"),
        ({k: v for k, v in DOCUMENTED.items() if k != "entrypoint"}, "entrypoint"),
        (with_field(manifestVersion=2), "manifestVersion"),
        (with_field(manifestVersion="1"), "manifestVersion"),
        (with_field(manifestVersion=True), "manifestVersion"),
        (with_field(manifestVersion=1.0), "manifestVersion"),
        (with_field(osType="Windows"), "osType"),
        (with_field(osType=None), "osType"),
        (with_field(entrypoint=[]), "entrypoint"),
        (with_field(entrypoint="python3 app.py"), "entrypoint"),
        (with_field(entrypoint=["python3", 1]), "entrypoint[1]"),
        (with_field(entrypoint=[""]), "entrypoint[0]"),
        (with_field(entrypoint=["python3", "a\x00b"]), "entrypoint[1]"),
        (with_field(ports=8080), "ports"),
        (with_field(ports=[8080, 0]), "ports[1]"),
        (with_field(ports=[8080, 65536]), "ports[1]"),
        (with_field(ports=[8080, True]), "ports[1]"),
        (with_field(ports=[8080, "80"]), "ports[1]"),
        (with_field(ports=[8080, 8080.0]), "ports[1]"),
        (with_field(ports=[8080, 8080]), "ports[1]"),
        (with_field(osName=5), "osName"),
        (with_field(osVersion=None), "osVersion"),
        (with_field(automaticOSUpgradeSupported="yes"), "automaticOSUpgradeSupported"),
        (with_field(automaticOSUpgradeSupported=1), "automaticOSUpgradeSupported"),
        (with_field(environment=["A=1"]), "environment"),
        (with_field(environment={"A": 1}), "environment.A"),
        (with_field(environment={"": "x"}), "environment."),
        (with_field(environment={"A=B": "x"}), "environment.A=B"),
        (with_field(environment={"PORT": "1"}), "environment.PORT"),
        (with_field(environment={"SCALESET_INSTANCE_ID": "1"}), "environment.SCALESET_INSTANCE_ID"),
    ],
)
def test_invalid_fields_are_named(data: dict[str, object], target: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_image_manifest(data)
    assert caught.value.target == target
    assert caught.value.message
    assert str(caught.value).startswith(f"{target}: ")


@pytest.mark.parametrize("data", [None, [], "manifest", 1])
def test_manifest_must_be_an_object(data: object) -> None:
    with pytest.raises(ManifestError, match="JSON object") as caught:
        parse_image_manifest(data)
    assert caught.value.target is None


def test_manifest_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_image_manifest({})


def write_manifest(directory: Path, content: str | bytes) -> None:
    path = directory / MANIFEST_FILE
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)


def test_read_manifest_from_directory(tmp_path: Path) -> None:
    write_manifest(tmp_path, json.dumps(DOCUMENTED))
    assert read_image_manifest(tmp_path) == parse_image_manifest(DOCUMENTED)


def test_read_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no scaleset-image\.json") as caught:
        read_image_manifest(tmp_path)
    assert caught.value.target == MANIFEST_FILE


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"manifestVersion": 1,', "not valid JSON.*line 1"),
        (b"\xff\xfe{}", "not UTF-8"),
        (" " * (MAX_MANIFEST_BYTES + 1), "larger than"),
    ],
)
def test_read_unreadable_manifest(tmp_path: Path, content: str | bytes, message: str) -> None:
    write_manifest(tmp_path, content)
    with pytest.raises(ManifestError, match=message) as caught:
        read_image_manifest(tmp_path)
    assert caught.value.target == MANIFEST_FILE


def test_read_manifest_with_duplicate_keys(tmp_path: Path) -> None:
    write_manifest(tmp_path, '{"manifestVersion": 1, "osType": "Linux", "osType": "Windows"}')
    with pytest.raises(ManifestError, match="more than once") as caught:
        read_image_manifest(tmp_path)
    assert caught.value.target == "osType"


def test_read_manifest_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).mkdir()
    with pytest.raises(ManifestError, match="cannot read"):
        read_image_manifest(tmp_path)


def test_read_manifest_with_invalid_field(tmp_path: Path) -> None:
    write_manifest(tmp_path, json.dumps(with_field(ports=[1, 70000])))
    with pytest.raises(ManifestError) as caught:
        read_image_manifest(tmp_path)
    assert caught.value.target == "ports[1]"
