"""The conformance suite every provider passes (the contract is `scaleset.providers.base`).

A provider's test module subclasses `ProviderConformance` and supplies its fixtures:

- `provider`: the Provider under test; its finaliser deletes every instance the test left behind.
- `make_spec`: a `SpecFactory`, `make_spec(key, generation=1)`, giving specs with at least data disk
  LUN 0. The factory picks the address: the same key always gets the same one, and no two keys share
  one, because two instances on one address would fight over their ports.
- `disks` (optional): a `DiskAccess` that reads and writes files on an instance's disks from outside,
  for the tests of what survives a restart or reimage. A provider without one leaves the default (None)
  and those tests are skipped.

Methods block until their action is done, so every test observes right after acting, without waiting.
"""

from __future__ import annotations

from typing import Literal, Protocol

import pytest

from scaleset.providers.base import InstanceSpec, InstanceState, Provider

Disk = Literal["os"] | int  # the OS disk, or the data disk with this LUN


class SpecFactory(Protocol):
    def __call__(self, key: str, *, generation: int = 1) -> InstanceSpec: ...


class DiskAccess(Protocol):
    def write_file(self, key: str, disk: Disk, name: str, text: str) -> None: ...

    def read_file(self, key: str, disk: Disk, name: str) -> str | None:
        """The file's text, or None when it does not exist."""


KEY = "conformance-set/0"
OTHER_KEY = "conformance-set/1"


def _state(provider: Provider, key: str = KEY) -> InstanceState:
    return provider.describe_instance(key).state


def _require(disks: DiskAccess | None) -> DiskAccess:
    if disks is None:
        pytest.skip("this provider offers no access to instance disks")
    return disks


class ProviderConformance:
    @pytest.fixture
    def provider(self) -> Provider:
        raise NotImplementedError("a conformance subclass supplies the `provider` fixture")

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        raise NotImplementedError("a conformance subclass supplies the `make_spec` fixture")

    @pytest.fixture
    def disks(self) -> DiskAccess | None:
        return None

    # -- create and describe -------------------------------------------------------------------------

    def test_describe_of_unknown_key_is_missing(self, provider: Provider) -> None:
        assert provider.describe_instance("no-such-set/7").state is InstanceState.MISSING

    def test_create_then_describe_is_running(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 1

    def test_create_twice_is_idempotent(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        provider.create_instance(make_spec(KEY))
        if disks is not None:
            disks.write_file(KEY, "os", "marker", "first create")

        provider.create_instance(make_spec(KEY))

        assert _state(provider) is InstanceState.RUNNING
        assert list(provider.list_instance_keys()) == [KEY]
        if disks is not None:  # the second create did not build a new OS disk
            assert disks.read_file(KEY, "os", "marker") == "first create"

    def test_create_of_stopped_instance_starts_it(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.stop_instance(KEY)

        provider.create_instance(make_spec(KEY))

        assert _state(provider) is InstanceState.RUNNING

    # -- power ---------------------------------------------------------------------------------------

    def test_stop_then_start(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.stop_instance(KEY)
        assert _state(provider) is InstanceState.STOPPED

        provider.start_instance(make_spec(KEY))
        assert _state(provider) is InstanceState.RUNNING

    def test_stop_of_stopped_instance_is_noop(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.stop_instance(KEY)

        provider.stop_instance(KEY)

        assert _state(provider) is InstanceState.STOPPED

    def test_start_of_running_instance_is_noop(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.start_instance(make_spec(KEY))

        assert _state(provider) is InstanceState.RUNNING

    def test_deallocate_then_start(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.deallocate_instance(KEY)
        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.DEALLOCATED
        assert observation.os_disk_generation == 1

        provider.start_instance(make_spec(KEY))
        assert _state(provider) is InstanceState.RUNNING

    def test_restart_keeps_instance_running_on_same_disk(
        self, provider: Provider, make_spec: SpecFactory
    ) -> None:
        provider.create_instance(make_spec(KEY))

        provider.restart_instance(make_spec(KEY))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 1

    def test_restart_keeps_every_disk(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        files = _require(disks)
        provider.create_instance(make_spec(KEY))
        files.write_file(KEY, "os", "marker", "os disk")
        files.write_file(KEY, 0, "marker", "data disk")

        provider.restart_instance(make_spec(KEY))

        assert files.read_file(KEY, "os", "marker") == "os disk"
        assert files.read_file(KEY, 0, "marker") == "data disk"

    # -- reimage -------------------------------------------------------------------------------------

    def test_reimage_to_new_generation(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.reimage_instance(make_spec(KEY, generation=2))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 2

    def test_reimage_of_stopped_instance_starts_it(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.stop_instance(KEY)

        provider.reimage_instance(make_spec(KEY, generation=2))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 2

    def test_reimage_replaces_os_disk_and_keeps_data_disks(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        files = _require(disks)
        provider.create_instance(make_spec(KEY))
        files.write_file(KEY, "os", "marker", "old os disk")
        files.write_file(KEY, 0, "marker", "data disk")

        provider.reimage_instance(make_spec(KEY, generation=2))

        assert files.read_file(KEY, "os", "marker") is None
        assert files.read_file(KEY, 0, "marker") == "data disk"

    def test_reimage_to_same_generation_while_running_is_noop(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        provider.create_instance(make_spec(KEY))
        provider.reimage_instance(make_spec(KEY, generation=2))
        if disks is not None:
            disks.write_file(KEY, "os", "marker", "written after the reimage")

        provider.reimage_instance(make_spec(KEY, generation=2))

        observation = provider.describe_instance(KEY)
        assert observation.state is InstanceState.RUNNING
        assert observation.os_disk_generation == 2
        if disks is not None:
            assert disks.read_file(KEY, "os", "marker") == "written after the reimage"

    # -- delete and list -----------------------------------------------------------------------------

    def test_delete_then_missing_and_unlisted(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))

        provider.delete_instance(KEY)

        assert _state(provider) is InstanceState.MISSING
        assert KEY not in provider.list_instance_keys()

    def test_delete_of_stopped_instance(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.deallocate_instance(KEY)

        provider.delete_instance(KEY)

        assert _state(provider) is InstanceState.MISSING

    def test_delete_twice_is_ok(self, provider: Provider, make_spec: SpecFactory) -> None:
        provider.create_instance(make_spec(KEY))
        provider.delete_instance(KEY)

        provider.delete_instance(KEY)
        provider.delete_instance("never-created/0")

        assert _state(provider) is InstanceState.MISSING

    def test_delete_then_create_gives_fresh_disks(
        self, provider: Provider, make_spec: SpecFactory, disks: DiskAccess | None
    ) -> None:
        files = _require(disks)
        provider.create_instance(make_spec(KEY))
        files.write_file(KEY, 0, "marker", "data disk")
        provider.delete_instance(KEY)

        provider.create_instance(make_spec(KEY))

        assert files.read_file(KEY, 0, "marker") is None

    def test_list_instance_keys(self, provider: Provider, make_spec: SpecFactory) -> None:
        assert list(provider.list_instance_keys()) == []
        provider.create_instance(make_spec(KEY))
        provider.create_instance(make_spec(OTHER_KEY))
        provider.stop_instance(OTHER_KEY)

        assert sorted(provider.list_instance_keys()) == [KEY, OTHER_KEY]

        provider.delete_instance(KEY)
        assert list(provider.list_instance_keys()) == [OTHER_KEY]
