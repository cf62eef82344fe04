"""The VM and availability-set services, made once per app from the container's parts.

The composition root (`bootstrap.Container`) does not know them yet; until it does, the routes build them
on first use from what it holds. They keep no state of their own, so two threads racing to build one
lose nothing.
"""

from __future__ import annotations

from fastapi import Request

from scaleset.api.deps import container
from scaleset.services.availability_sets import AvailabilitySetService
from scaleset.services.secrets import SecretBox
from scaleset.services.vms import VmService


def vm_service(request: Request) -> VmService:
    service: VmService | None = getattr(request.app.state, "vm_service", None)
    if service is None:
        c = container(request)
        service = VmService(
            c.db,
            c.clock,
            c.catalog,
            c.extensions,
            SecretBox.in_directory(c.settings.data_dir),
            c.scalesets,
            c.executor.wake,
        )
        request.app.state.vm_service = service
    return service


def availability_set_service(request: Request) -> AvailabilitySetService:
    service: AvailabilitySetService | None = getattr(request.app.state, "availability_set_service", None)
    if service is None:
        c = container(request)
        service = AvailabilitySetService(c.db, c.clock)
        request.app.state.availability_set_service = service
    return service
