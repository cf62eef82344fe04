"""Fixtures of the local provider's tests (`test_local.py`, `test_local_guest.py`)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaleset.guest.init import ENV_GOAL_STATE_POLL, ENV_GUEST_STATUS_INTERVAL
from scaleset.providers.base import ImageArtifact, InstanceSpec
from scaleset.providers.local import LocalProvider
from tests.providers.conformance import SpecFactory

IMAGES = Path(__file__).resolve().parents[2] / "examples" / "images"


def load_image(name: str) -> ImageArtifact:
    manifest = json.loads((IMAGES / name / "scaleset-image.json").read_text())
    return ImageArtifact(
        path=IMAGES / name,
        entrypoint=tuple(manifest["entrypoint"]),
        ports=tuple(manifest["ports"]),
        environment=manifest.get("environment", {}),
    )


@pytest.fixture
def local_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalProvider]:
    # Inits inherit the test's environment: short guest polls keep the guest tests fast.
    monkeypatch.setenv(ENV_GOAL_STATE_POLL, "0.05")
    monkeypatch.setenv(ENV_GUEST_STATUS_INTERVAL, "0.1")
    provider = LocalProvider(tmp_path / "instances", stop_timeout=2.0)
    yield provider
    # Runs even when the test failed: no instance process may outlive its test.
    for key in provider.list_instance_keys():
        provider.delete_instance(key)
    provider.close()


@pytest.fixture
def spec_for() -> SpecFactory:
    # A random third octet keeps concurrent test runs on one host apart; each key gets its own host.
    network = f"127.77.{random.randrange(256)}"
    addresses: dict[str, str] = {}
    image = load_image("webapp-1.0.0")

    def make_spec(key: str, *, generation: int = 1) -> InstanceSpec:
        address = addresses.setdefault(key, f"{network}.{len(addresses) + 1}")
        return InstanceSpec(
            key=key, image=image, address=address, data_disk_luns=(0,), os_disk_generation=generation
        )

    return make_spec
