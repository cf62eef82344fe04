"""Standalone VMs (`Microsoft.Compute/virtualMachines`) and their extensions, as Azure serves them.

PUT, PATCH, DELETE and the POST actions are long-running operations, answered as the scale-set ones are
(api/lro.py). A VM's network interface is served read-only under `Microsoft.Network/networkInterfaces/
<vm>-nic`, so a client can find the VM's address as on Azure (the NIC is made with the VM, never alone).
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from scaleset.api.deps import container, json_body, require_access
from scaleset.api.guest_views import extension_views, guest_status_of
from scaleset.api.lro import accepted, resource_response
from scaleset.api.views import extension_resource_view, instance_view, iso, primary_nic_view, public_model
from scaleset.api.vm_deps import vm_service
from scaleset.bootstrap import Container
from scaleset.catalog.manifest import parse_image_manifest
from scaleset.domain.errors import ArmError
from scaleset.domain.scaleset_spec import merge_patch, reference_request
from scaleset.engine.executor import instance_key
from scaleset.services.lookups import resource_not_found
from scaleset.services.vms import VM_ACTIONS, VmState, vm_id_of

router = APIRouter(dependencies=[Depends(require_access)])
RG = "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
VM = RG + "/virtualmachines/{name}"
NIC = (
    "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.network/networkinterfaces/{nic}"
)
VM_TYPE = "Microsoft.Compute/virtualMachines"
NIC_SUFFIX = "-nic"


# ------------------------------------------------------------------------------------------- views
def _nic_id(state: VmState) -> str:
    return (
        f"/subscriptions/{state.vm.subscription}/resourceGroups/{state.group_name}/providers/"
        f"Microsoft.Network/networkInterfaces/{state.vm.name}{NIC_SUFFIX}"
    )


def _os_disk_name(state: VmState) -> str:
    generation = state.instance.os_disk_generation if state.instance else 1
    return f"{state.vm.name}_OsDisk_{generation}"


def _provisioning_state(state: VmState) -> str:
    return state.scale_set.provisioning_state


def _vm_instance_view(c: Container, state: VmState) -> dict[str, Any]:
    """Azure's VirtualMachineInstanceView: the scale-set instance's view with the VM's own name, disk
    and place in its availability set."""
    instance = state.instance
    if instance is None:
        state_code = _provisioning_state(state).lower()
        return {"statuses": [{"code": f"ProvisioningState/{state_code}", "level": "Info"}]}
    reference = state.model["storageProfile"]["imageReference"]
    image = c.catalog.find(
        state.scale_set.location,
        reference_request(reference).with_version(instance.image_version),
    )
    manifest = parse_image_manifest(image.manifest) if image else None
    report = c.provider.read_guest_report(instance_key(state.scale_set, instance))
    view = instance_view(state.scale_set, instance, state.model, manifest, report)
    view.pop("zones", None)
    view["computerName"] = state.vm.document["properties"]["osProfile"]["computerName"]
    view["platformUpdateDomain"] = state.vm.update_domain
    view["platformFaultDomain"] = state.vm.fault_domain
    view["hyperVGeneration"] = "V2"
    view["disks"][0]["name"] = _os_disk_name(state)
    return view


def _extension_views(c: Container, state: VmState, expand: bool) -> list[dict[str, Any]]:
    """The VM's extensions, each with its state on the instance as the guest agent reports it."""
    status = None
    if state.instance is not None:
        status = guest_status_of(c.provider.read_guest_report(instance_key(state.scale_set, state.instance)))
    seen = {e["name"].lower(): e for e in extension_views(status)} if status else {}
    vm_id = vm_id_of(state.vm.subscription, state.group_name, state.vm.name)
    return [
        extension_resource_view(
            extension, seen.get(str(extension["name"]).lower()), vm_id, state.vm.location, expand
        )
        for extension in state.vm.extensions
    ]


def vm_view(c: Container, state: VmState, expand: bool = False) -> dict[str, Any]:
    document = state.vm.document
    properties = copy.deepcopy(document["properties"])
    model = public_model(state.model)
    storage = model["storageProfile"]
    reference = dict(storage["imageReference"])
    if state.instance is not None:
        reference["exactVersion"] = state.instance.image_version
    properties["storageProfile"] = {
        **properties["storageProfile"],
        "imageReference": reference,
        "osDisk": {
            **storage.get("osDisk", {}),
            "name": _os_disk_name(state),
            "osType": "Linux",
        },
        "dataDisks": storage.get("dataDisks", []),
    }
    properties["osProfile"] = {
        k: v for k, v in properties["osProfile"].items() if k not in ("customData", "adminPassword")
    }
    properties.setdefault(
        "networkProfile",
        {"networkInterfaces": [{"id": _nic_id(state), "properties": {"primary": True}}]},
    )
    properties["vmId"] = state.instance.vm_id if state.instance else state.scale_set.uid
    properties["provisioningState"] = _provisioning_state(state)
    properties["timeCreated"] = iso(state.vm.created_at)
    if expand:
        properties["instanceView"] = _vm_instance_view(c, state)
    view: dict[str, Any] = {
        "id": vm_id_of(state.vm.subscription, state.group_name, state.vm.name),
        "name": state.vm.name,
        "type": VM_TYPE,
        "location": state.vm.location,
        "tags": document.get("tags", {}),
        "properties": properties,
    }
    if document.get("zones"):
        view["zones"] = document["zones"]
    extensions = _extension_views(c, state, expand=False)
    if extensions:
        view["resources"] = extensions
    return view


def _expands_instance_view(request: Request) -> bool:
    return request.query_params.get("$expand", "").lower() == "instanceview"


# ---------------------------------------------------------------------------------------------- VMs
@router.put(VM)
def put_vm(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> JSONResponse:
    c, service = container(request), vm_service(request)
    change = service.put(subscription, group, name, body)
    fresh = service.get(subscription, group, name)
    return resource_response(request, change.operation, vm_view(c, fresh), change.created)


@router.patch(VM)
def patch_vm(
    request: Request, subscription: str, group: str, name: str, body: Any = Depends(json_body)
) -> JSONResponse:
    c, service = container(request), vm_service(request)
    current = service.get(subscription, group, name).vm.document
    change = service.put(subscription, group, name, merge_patch(current, body))
    fresh = service.get(subscription, group, name)
    return resource_response(request, change.operation, vm_view(c, fresh), created=False)


@router.get(VM)
def get_vm(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    state = vm_service(request).get(subscription, group, name)
    return vm_view(container(request), state, _expands_instance_view(request))


@router.delete(VM)
def delete_vm(request: Request, subscription: str, group: str, name: str) -> Response:
    operation = vm_service(request).delete(subscription, group, name)
    return Response(status_code=204) if operation is None else accepted(request, operation)


@router.get(RG + "/virtualmachines")
def list_vms_in_group(request: Request, subscription: str, group: str) -> dict[str, Any]:
    c = container(request)
    expand = _expands_instance_view(request)
    return {"value": [vm_view(c, s, expand) for s in vm_service(request).list_vms(subscription, group)]}


@router.get("/subscriptions/{subscription}/providers/microsoft.compute/virtualmachines")
def list_all_vms(request: Request, subscription: str) -> dict[str, Any]:
    c = container(request)
    expand = _expands_instance_view(request)
    return {"value": [vm_view(c, s, expand) for s in vm_service(request).list_vms(subscription)]}


@router.get(VM + "/instanceview")
def get_vm_instance_view(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    state = vm_service(request).get(subscription, group, name)
    return _vm_instance_view(container(request), state)


@router.post(VM + "/{action}")
def vm_action(
    request: Request, subscription: str, group: str, name: str, action: str, body: Any = Depends(json_body)
) -> Response:
    verb = action.lower()
    if verb not in VM_ACTIONS:
        raise ArmError(404, "NotFound", f"No API serves the path '{request.url.path}'.")
    operation = vm_service(request).action(subscription, group, name, verb, body)
    return accepted(request, operation)


@router.get(NIC)
def get_vm_network_interface(request: Request, subscription: str, group: str, nic: str) -> dict[str, Any]:
    not_found = resource_not_found("Microsoft.Network/networkInterfaces", group, nic)
    if not nic.lower().endswith(NIC_SUFFIX):
        raise not_found
    try:
        state = vm_service(request).get(subscription, group, nic[: -len(NIC_SUFFIX)])
    except ArmError as error:
        if error.status == 404 and error.code == "ResourceNotFound":
            raise not_found from None
        raise
    return primary_nic_view(
        _nic_id(state),
        f"{state.vm.name}{NIC_SUFFIX}",
        state.vm.location,
        vm_id_of(state.vm.subscription, state.group_name, state.vm.name),
        state.instance.address if state.instance else None,
    )


# ---------------------------------------------------------------------------------------- extensions
def _extension_or_404(c: Container, state: VmState, extension: str, expand: bool) -> dict[str, Any]:
    for view in _extension_views(c, state, expand):
        if view["name"].lower() == extension.lower():
            return view
    raise ArmError(
        404, "ResourceNotFound", f"The extension '{extension}' of VM '{state.vm.name}' was not found."
    )


@router.get(VM + "/extensions")
def list_vm_extensions(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    state = vm_service(request).get(subscription, group, name)
    return {"value": _extension_views(container(request), state, _expands_instance_view(request))}


@router.get(VM + "/extensions/{extension}")
def get_vm_extension(
    request: Request, subscription: str, group: str, name: str, extension: str
) -> dict[str, Any]:
    state = vm_service(request).get(subscription, group, name)
    return _extension_or_404(container(request), state, extension, _expands_instance_view(request))


def _put_extension(
    request: Request, subscription: str, group: str, name: str, extension: str, body: Any, merge: bool
) -> JSONResponse:
    c, service = container(request), vm_service(request)
    change = service.put_extension(subscription, group, name, extension, body, merge)
    view = _extension_or_404(c, service.get(subscription, group, name), extension, expand=False)
    return resource_response(request, change.operation, view, change.created)


@router.put(VM + "/extensions/{extension}")
def put_vm_extension(
    request: Request, subscription: str, group: str, name: str, extension: str, body: Any = Depends(json_body)
) -> JSONResponse:
    return _put_extension(request, subscription, group, name, extension, body, merge=False)


@router.patch(VM + "/extensions/{extension}")
def patch_vm_extension(
    request: Request, subscription: str, group: str, name: str, extension: str, body: Any = Depends(json_body)
) -> JSONResponse:
    return _put_extension(request, subscription, group, name, extension, body, merge=True)


@router.delete(VM + "/extensions/{extension}")
def delete_vm_extension(
    request: Request, subscription: str, group: str, name: str, extension: str
) -> Response:
    operation = vm_service(request).delete_extension(subscription, group, name, extension)
    return accepted(request, operation)
