"""End-to-end fixtures: a real `scaleset serve` process shared by a test module (`serve_module`), SDK
clients, and what modules share around them: per-test cleanup (`made_in`) and instance views."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ResourceNotFoundError
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachineScaleSetVM
from azure.mgmt.resource.resources import ResourceManagementClient

from tests.support import (
    NETWORK_API,
    ServerProcess,
    dispose,
    eventually,
    lb_path,
    new_data_dir,
    publish_image,
    server_log_errors,
)


class StaticToken:
    """A TokenCredential that hands out one scaleset token (what README tells users to write)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


class BearerOverHttp(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """The SDK's own bearer policy refuses plain http (azure-api.md headline 3); on loopback we add the
    header ourselves."""

    def __init__(self, token: str) -> None:
        self.token = token

    def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        request.http_request.headers["Authorization"] = f"Bearer {self.token}"


def compute_client(server: ServerProcess, token: str | None = None) -> ComputeManagementClient:
    token = token or server.admin_token
    return ComputeManagementClient(
        StaticToken(token),
        server.subscription,
        base_url=server.endpoint,
        authentication_policy=BearerOverHttp(token),
        polling_interval=0.2,
    )


def resource_client(server: ServerProcess, token: str | None = None) -> ResourceManagementClient:
    token = token or server.admin_token
    return ResourceManagementClient(
        StaticToken(token),
        server.subscription,
        base_url=server.endpoint,
        authentication_policy=BearerOverHttp(token),
        polling_interval=0.2,
    )


def serve_module(
    prefix: str,
    group: str | None = None,
    environment: dict[str, str] | None = None,
    *,
    extra_args: tuple[str, ...] = (),
    webapp_versions: Sequence[str] = (),
    before_stop: Callable[[ServerProcess], None] | None = None,
) -> Iterator[ServerProcess]:
    """A module's `scaleset serve`: started (webapp versions published, `group` created), yielded, then
    stopped, failing if instances were left running; module fixtures `yield from` it."""
    process = ServerProcess(
        new_data_dir(prefix), environment=environment or {}, extra_args=extra_args
    ).start()
    try:
        for version in webapp_versions:
            publish_image(process, f"webapp-{version}", version=version)
        if group is not None:
            resource_client(process).resource_groups.create_or_update(group, {"location": "eastus"})
        yield process
    finally:
        if before_stop is not None:
            before_stop(process)
        leftovers = dispose(process)
        assert not leftovers, f"instances left running after the module: {leftovers}"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve_module("scaleset-e2e-", extra_args=("--page-size", "4"))


@pytest.fixture(scope="module")
def published(server: ServerProcess) -> ServerProcess:
    """The sample webapp images, published once per server."""
    for version in ("1.0.0", "1.1.0"):
        publish_image(server, f"webapp-{version}", version=version)
    return server


@pytest.fixture(scope="module")
def compute(server: ServerProcess) -> ComputeManagementClient:
    """An SDK compute client on the module's server."""
    return compute_client(server)


def delete_sets(compute: ComputeManagementClient, group: str, names: Sequence[str]) -> None:
    """Delete the scale sets `names` in `group` and wait; one already gone is fine."""
    for name in names:
        with contextlib.suppress(ResourceNotFoundError):
            compute.virtual_machine_scale_sets.begin_delete(group, name).result()


@dataclass
class Made:
    """What a test made in `group`, removed at its end whatever happened (sets first: they hold probes)."""

    server: ServerProcess
    compute: ComputeManagementClient
    group: str
    sets: list[str] = field(default_factory=list)
    load_balancers: list[str] = field(default_factory=list)

    def remove(self) -> None:
        delete_sets(self.compute, self.group, self.sets)
        if self.load_balancers:
            with self.server.client() as client:
                for name in self.load_balancers:
                    client.delete(lb_path(self.server, self.group, name), params=NETWORK_API)


@contextlib.contextmanager
def made_in(
    server: ServerProcess,
    compute: ComputeManagementClient,
    group: str,
    *,
    restart_killed_server: bool = False,
) -> Iterator[Made]:
    """A test's `Made` record, removed at the end (after restarting a killed server if asked); then the
    server must have logged no error while the test ran."""
    record = Made(server, compute, group)
    log_start = server.log_path.stat().st_size if server.log_path else 0
    try:
        yield record
    finally:
        if restart_killed_server and (server.process is None or server.process.poll() is not None):
            server.start()  # a test that failed between the kill and the restart
        record.remove()
    assert not server_log_errors(server, log_start), server.log_path


def scale_set_vms(
    compute: ComputeManagementClient, group: str, name: str
) -> dict[str, VirtualMachineScaleSetVM]:
    """The instances of scale set `name` in `group` with their instance views, by instance id."""
    listed = compute.virtual_machine_scale_set_vms.list(group, name, expand="instanceView")
    return {str(vm.instance_id): vm for vm in listed}


def health_of(vm: VirtualMachineScaleSetVM) -> str | None:
    """The instance's vmHealth code (`HealthState/healthy`, ...), None while it has none."""
    health = vm.instance_view.vm_health
    return health.status.code if health is not None and health.status is not None else None


def wait_all_healthy(
    compute: ComputeManagementClient, group: str, name: str, count: int, timeout: float = 60
) -> dict[str, VirtualMachineScaleSetVM]:
    """Wait until the set has exactly `count` instances, all healthy; return them by instance id."""

    def check() -> dict[str, VirtualMachineScaleSetVM] | None:
        found = scale_set_vms(compute, group, name)
        healthy = len(found) == count and all(health_of(vm) == "HealthState/healthy" for vm in found.values())
        return found if healthy else None

    result: dict[str, VirtualMachineScaleSetVM] = eventually(
        check, timeout, what=f"all {count} instances of {name} healthy"
    )
    return result


def provisioned_at(vm: VirtualMachineScaleSetVM) -> datetime:
    """When the instance's provisioning last succeeded (a reimage moves it, a restore does not)."""
    status = vm.instance_view.statuses[0]
    assert status.code == "ProvisioningState/succeeded", status
    moment: datetime = status.time
    return moment
