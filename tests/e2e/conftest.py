"""End-to-end fixtures: a real `scaleset serve` process shared by a test module, and SDK clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient

from tests.support import EXAMPLE_IMAGES, ServerProcess, dispose, new_data_dir


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


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(new_data_dir("scaleset-e2e-"), extra_args=("--page-size", "4")).start()
    try:
        yield process
    finally:
        leftovers = dispose(process)
        assert not leftovers, f"instances left running after the module: {leftovers}"


@pytest.fixture(scope="module")
def published(server: ServerProcess) -> ServerProcess:
    """The sample webapp images, published once per server."""
    for version in ("1.0.0", "1.1.0"):
        response = server.publish(EXAMPLE_IMAGES / f"webapp-{version}", version=version)
        assert response.status_code == 201, response.text
    return server
