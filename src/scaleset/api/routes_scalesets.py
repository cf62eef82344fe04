"""Scale sets and their instances (`Microsoft.Compute/virtualMachineScaleSets[/virtualMachines]`)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, json_body, require_access
from scaleset.api.guest_views import extension_views, guest_status_of, vm_health_view
from scaleset.api.lro import accepted, resource_response
from scaleset.api.views import (
    extension_resource_view,
    instance_view,
    network_interface_view,
    public_extension_properties,
    public_model,
    rolling_upgrade_view,
    scale_set_view,
    set_instance_view,
    vm_id_of,
    vm_view,
)
from scaleset.bootstrap import Container
from scaleset.catalog.manifest import ImageManifest, parse_image_manifest
from scaleset.domain.errors import ArmError, invalid
from scaleset.domain.scaleset_spec import has_health_probe, reference_request
from scaleset.engine.executor import instance_key
from scaleset.engine.rolling import facts_of
from scaleset.services.scalesets import POWER_ACTIONS, set_id_of
from scaleset.store.tables import Instance, ScaleSet

router = APIRouter(dependencies=[Depends(require_access)])
RG = "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
SET = RG + "/virtualmachinescalesets/{name}"
VM = SET + "/virtualmachines/{instance_id}"
_LATEST_FILTER = re.compile(r"^\s*properties/latestmodelapplied\s+eq\s+(true|false)\s*$", re.IGNORECASE)


def _set_view(c: Container, scale_set: ScaleSet) -> dict[str, Any]:
    return scale_set_view(scale_set, c.scalesets.group_name_of(scale_set))


# ----------------------------------------------------------------------------------------- scale sets
@router.put(SET)
def put_scale_set(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> JSONResponse:
    c = container(request)
    change = c.scalesets.put_set(subscription, group, name, body)
    fresh = c.scalesets.get_set(subscription, group, name)
    return resource_response(request, change.operation, _set_view(c, fresh), change.created)


@router.patch(SET)
def patch_scale_set(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> JSONResponse:
    c = container(request)
    change = c.scalesets.patch_set(subscription, group, name, body)
    fresh = c.scalesets.get_set(subscription, group, name)
    return resource_response(request, change.operation, _set_view(c, fresh), created=False)


@router.get(SET)
def get_scale_set(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    c = container(request)
    return _set_view(c, c.scalesets.get_set(subscription, group, name))


@router.delete(SET)
def delete_scale_set(request: Request, subscription: str, group: str, name: str) -> Response:
    operation = container(request).scalesets.delete_set(subscription, group, name)
    return accepted(request, operation)


@router.get(RG + "/virtualmachinescalesets")
def list_scale_sets_in_group(request: Request, subscription: str, group: str) -> dict[str, Any]:
    c = container(request)
    return {"value": [_set_view(c, s) for s in c.scalesets.list_sets(subscription, group_name=group)]}


@router.get("/subscriptions/{subscription}/providers/microsoft.compute/virtualmachinescalesets")
def list_all_scale_sets(request: Request, subscription: str) -> dict[str, Any]:
    c = container(request)
    return {"value": [_set_view(c, s) for s in c.scalesets.list_sets(subscription)]}


@router.get(
    "/subscriptions/{subscription}/providers/microsoft.compute/locations/{location}/virtualmachinescalesets"
)
def list_scale_sets_by_location(request: Request, subscription: str, location: str) -> dict[str, Any]:
    c = container(request)
    return {"value": [_set_view(c, s) for s in c.scalesets.list_sets(subscription, location=location)]}


@router.get(SET + "/instanceview")
def get_scale_set_instance_view(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    c = container(request)
    scale_set, instances = c.scalesets.list_instances(subscription, group, name)
    reports = [(i, c.provider.read_guest_report(instance_key(scale_set, i))) for i in instances]
    return set_instance_view(scale_set, reports)


@router.get(SET + "/networkinterfaces")
def list_set_network_interfaces(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    c = container(request)
    scale_set, instances = c.scalesets.list_instances(subscription, group, name)
    group_name = c.scalesets.group_name_of(scale_set)
    return {"value": [network_interface_view(scale_set, group_name, i) for i in instances]}


@router.post(SET + "/{action}")
def scale_set_action(
    request: Request, subscription: str, group: str, name: str, action: str, body: Any = Depends(json_body)
) -> Response:
    c = container(request)
    verb = action.lower()
    if verb == "delete":
        operation = c.scalesets.set_action(subscription, group, name, "delete", body)
    elif verb == "manualupgrade":
        operation = c.scalesets.manual_upgrade(subscription, group, name, body)
    elif verb == "osrollingupgrade":
        operation = c.upgrades.start_os_upgrade(subscription, group, name)
    elif verb == "extensionrollingupgrade":
        operation = c.upgrades.start_extension_upgrade(subscription, group, name)
    elif verb in POWER_ACTIONS:
        operation = c.scalesets.set_action(subscription, group, name, POWER_ACTIONS[verb], body)
    else:
        raise ArmError(404, "NotFound", f"No API serves the path '{request.url.path}'.")
    return accepted(request, operation)


@router.post(SET + "/rollingupgrades/cancel")
def cancel_rolling_upgrade(request: Request, subscription: str, group: str, name: str) -> Response:
    """Cancel stops the run after its current batch; the operation ends when the run has stopped."""
    return accepted(request, container(request).upgrades.cancel(subscription, group, name))


@router.get(SET + "/rollingupgrades/latest")
def latest_rolling_upgrade(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    return rolling_upgrade_view(container(request).upgrades.latest(subscription, group, name))


# ----------------------------------------------------------------------------------------- instances
class _VmRenderer:
    """Renders a set's instances, reading each model version and image manifest once per request."""

    def __init__(self, c: Container, scale_set: ScaleSet) -> None:
        self._c = c
        self._set = scale_set
        self._group_name = c.scalesets.group_name_of(scale_set)
        self._models: dict[int, dict[str, Any]] = {}
        self._public_models: dict[int, dict[str, Any]] = {}
        self._manifests: dict[tuple[int, str], ImageManifest | None] = {}

    def model(self, instance: Instance) -> dict[str, Any]:
        if instance.model_version not in self._models:
            self._models[instance.model_version] = self._c.scalesets.model_for(
                self._set, instance.model_version
            )
        return self._models[instance.model_version]

    def instance_view(self, instance: Instance) -> dict[str, Any]:
        key = (instance.model_version, instance.image_version)
        if key not in self._manifests:
            reference = self.model(instance)["storageProfile"]["imageReference"]
            image = self._c.catalog.find(
                self._set.location, reference_request(reference).with_version(instance.image_version)
            )
            self._manifests[key] = parse_image_manifest(image.manifest) if image else None
        report = self._c.provider.read_guest_report(instance_key(self._set, instance))
        model = self.model(instance)
        view = instance_view(self._set, instance, model, self._manifests[key], report)
        if has_health_probe(model):
            # The load balancer's verdict, as the control plane probes the instance.
            view["vmHealth"] = vm_health_view(self._c.health.state(model, facts_of(self._set, instance)))
        return view

    def vm(self, instance: Instance, expand: bool) -> dict[str, Any]:
        view = self.instance_view(instance) if expand else None
        if instance.model_version not in self._public_models:
            self._public_models[instance.model_version] = public_model(self.model(instance))
        return vm_view(
            self._set, self._group_name, instance, self._public_models[instance.model_version], view
        )


def _expands_instance_view(request: Request) -> bool:
    # The health-extension docs write `$expand=instanceview`: compare without case.
    return request.query_params.get("$expand", "").lower() == "instanceview"


@router.get(SET + "/virtualmachines")
def list_vms(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    c = container(request)
    scale_set, instances = c.scalesets.list_instances(subscription, group, name)
    instances = _filter(request, scale_set, instances)
    start = _skip_token(request)
    page = instances[start : start + c.settings.page_size]
    expand = _expands_instance_view(request)
    renderer = _VmRenderer(c, scale_set)
    result: dict[str, Any] = {"value": [renderer.vm(i, expand) for i in page]}
    if start + c.settings.page_size < len(instances):
        query = {k: v for k, v in request.query_params.items() if k != "$skiptoken"}
        query["$skiptoken"] = str(start + c.settings.page_size)
        result["nextLink"] = f"{str(request.url).split('?')[0]}?{urlencode(query)}"
    return result


def _filter(request: Request, scale_set: ScaleSet, instances: list[Instance]) -> list[Instance]:
    text = request.query_params.get("$filter")
    if not text:
        return instances
    match = _LATEST_FILTER.match(text)
    if match is None:
        raise invalid("$filter", "Supported filters: properties/latestModelApplied eq true|false.")
    wanted = match.group(1).lower() == "true"
    return [i for i in instances if (i.model_version == scale_set.model_version) == wanted]


def _skip_token(request: Request) -> int:
    token = request.query_params.get("$skiptoken", "0")
    if not token.isdigit():
        raise invalid("$skiptoken", "The page token is not valid; follow nextLink as given.")
    return int(token)


@router.get(VM)
def get_vm(request: Request, subscription: str, group: str, name: str, instance_id: str) -> dict[str, Any]:
    c = container(request)
    scale_set, instance = c.scalesets.get_instance(subscription, group, name, instance_id)
    return _VmRenderer(c, scale_set).vm(instance, _expands_instance_view(request))


@router.put(VM)
def update_vm(
    request: Request,
    subscription: str,
    group: str,
    name: str,
    instance_id: str,
    body: Any = Depends(json_body),
) -> JSONResponse:
    c = container(request)
    operation = c.scalesets.update_vm(subscription, group, name, instance_id, body)
    scale_set, instance = c.scalesets.get_instance(subscription, group, name, instance_id)
    return resource_response(request, operation, _VmRenderer(c, scale_set).vm(instance, False), created=False)


@router.delete(VM)
def delete_vm(request: Request, subscription: str, group: str, name: str, instance_id: str) -> Response:
    operation = container(request).scalesets.delete_vm(subscription, group, name, instance_id)
    return accepted(request, operation)


@router.get(VM + "/instanceview")
def get_vm_instance_view(
    request: Request, subscription: str, group: str, name: str, instance_id: str
) -> dict[str, Any]:
    c = container(request)
    scale_set, instance = c.scalesets.get_instance(subscription, group, name, instance_id)
    return _VmRenderer(c, scale_set).instance_view(instance)


@router.get(VM + "/networkinterfaces")
def list_vm_network_interfaces(
    request: Request, subscription: str, group: str, name: str, instance_id: str
) -> dict[str, Any]:
    c = container(request)
    scale_set, instance = c.scalesets.get_instance(subscription, group, name, instance_id)
    return {"value": [network_interface_view(scale_set, c.scalesets.group_name_of(scale_set), instance)]}


@router.post(VM + "/{action}")
def vm_action(
    request: Request,
    subscription: str,
    group: str,
    name: str,
    instance_id: str,
    action: str,
    body: Any = Depends(json_body),
) -> Response:
    verb = action.lower()
    if verb not in POWER_ACTIONS:
        raise ArmError(404, "NotFound", f"No API serves the path '{request.url.path}'.")
    operation = container(request).scalesets.vm_action(
        subscription, group, name, instance_id, POWER_ACTIONS[verb], body
    )
    return accepted(request, operation)


# ------------------------------------------------------------------------------ scale-set extensions
def _extension_view(set_id: str, extension: dict[str, Any], provisioning_state: str) -> dict[str, Any]:
    properties = public_extension_properties(extension["properties"])
    properties["provisioningState"] = provisioning_state
    return {
        "id": f"{set_id}/extensions/{extension['name']}",
        "name": extension["name"],
        "type": "Microsoft.Compute/virtualMachineScaleSets/extensions",
        "properties": properties,
    }


def _extensions_of(scale_set: ScaleSet) -> list[dict[str, Any]]:
    profile = scale_set.document["properties"]["virtualMachineProfile"]
    return list((profile.get("extensionProfile") or {}).get("extensions") or [])


def _set_extension_views(c: Container, scale_set: ScaleSet) -> list[dict[str, Any]]:
    set_id = set_id_of(scale_set.subscription, c.scalesets.group_name_of(scale_set), scale_set.name)
    return [_extension_view(set_id, e, scale_set.provisioning_state) for e in _extensions_of(scale_set)]


@router.get(SET + "/extensions")
def list_set_extensions(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    c = container(request)
    return {"value": _set_extension_views(c, c.scalesets.get_set(subscription, group, name))}


@router.get(SET + "/extensions/{extension}")
def get_set_extension(
    request: Request, subscription: str, group: str, name: str, extension: str
) -> dict[str, Any]:
    c = container(request)
    for view in _set_extension_views(c, c.scalesets.get_set(subscription, group, name)):
        if view["name"].lower() == extension.lower():
            return view
    raise ArmError(
        404, "ResourceNotFound", f"The extension '{extension}' of scale set '{name}' was not found."
    )


def _extension_response(request: Request, c: Container, change: Any, extension: str) -> JSONResponse:
    scale_set = c.scalesets.get_set(
        change.scale_set.subscription, c.scalesets.group_name_of(change.scale_set), change.scale_set.name
    )
    view = next(v for v in _set_extension_views(c, scale_set) if v["name"].lower() == extension.lower())
    return resource_response(request, change.operation, view, change.created)


@router.put(SET + "/extensions/{extension}")
def put_set_extension(
    request: Request, subscription: str, group: str, name: str, extension: str, body: Any = Depends(json_body)
) -> JSONResponse:
    c = container(request)
    change = c.scalesets.put_extension(subscription, group, name, extension, body)
    return _extension_response(request, c, change, extension)


@router.patch(SET + "/extensions/{extension}")
def patch_set_extension(
    request: Request, subscription: str, group: str, name: str, extension: str, body: Any = Depends(json_body)
) -> JSONResponse:
    c = container(request)
    change = c.scalesets.put_extension(subscription, group, name, extension, body, merge=True)
    return _extension_response(request, c, change, extension)


@router.delete(SET + "/extensions/{extension}")
def delete_set_extension(
    request: Request, subscription: str, group: str, name: str, extension: str
) -> Response:
    change = container(request).scalesets.delete_extension(subscription, group, name, extension)
    return accepted(request, change.operation)


# ---------------------------------------------------------------------------- per-instance extensions
def _vm_extension_views(
    c: Container, scale_set: ScaleSet, instance: Instance, expand: bool
) -> list[dict[str, Any]]:
    """The extensions of the model the instance runs, with their state on this instance."""
    renderer = _VmRenderer(c, scale_set)
    profile = renderer.model(instance)
    report = c.provider.read_guest_report(instance_key(scale_set, instance))
    status = guest_status_of(report)
    by_name = {e["name"]: e for e in extension_views(status)} if status else {}
    vm_id = vm_id_of(scale_set, c.scalesets.group_name_of(scale_set), instance)
    return [
        extension_resource_view(extension, by_name.get(extension["name"]), vm_id, scale_set.location, expand)
        for extension in (profile.get("extensionProfile") or {}).get("extensions") or []
    ]


@router.get(VM + "/extensions")
def list_vm_extensions(
    request: Request, subscription: str, group: str, name: str, instance_id: str
) -> dict[str, Any]:
    c = container(request)
    scale_set, instance = c.scalesets.get_instance(subscription, group, name, instance_id)
    return {"value": _vm_extension_views(c, scale_set, instance, _expands_instance_view(request))}


@router.get(VM + "/extensions/{extension}")
def get_vm_extension(
    request: Request, subscription: str, group: str, name: str, instance_id: str, extension: str
) -> dict[str, Any]:
    c = container(request)
    scale_set, instance = c.scalesets.get_instance(subscription, group, name, instance_id)
    for view in _vm_extension_views(c, scale_set, instance, _expands_instance_view(request)):
        if view["name"].lower() == extension.lower():
            return view
    raise ArmError(
        404, "ResourceNotFound", f"The extension '{extension}' of instance {instance_id} was not found."
    )
