"""The guest's report in Azure's instance-view shapes (extension-protocol.md §2.9).

Mapping (Azure's own is inferred from published samples): an extension's status `success` →
`ProvisioningState/succeeded`, `error` → `ProvisioningState/failed/<code>`, `transitioning` →
`ProvisioningState/transitioning`, `warning` → succeeded at level Warning; each substatus →
`ComponentStatus/<name>/<succeeded|failed|transitioning>`. The Application Health extension's
`ApplicationHealthState` substatus becomes the instance's `vmHealth` (`HealthState/healthy|unhealthy|
unknown|initializing`).
"""

from __future__ import annotations

from typing import Any

from scaleset.guest.goalstate import ExtensionStatus, GuestStatus, SubStatus
from scaleset.providers.base import GuestReport

Json = dict[str, Any]
APPLICATION_HEALTH = "microsoft.managedservices.applicationhealth"
_HEALTH_LEVEL = {"healthy": "Info", "initializing": "Info", "unhealthy": "Error", "unknown": "Warning"}
_HEALTH_DISPLAY = {
    "healthy": "The VM is healthy",
    "unhealthy": "The VM is unhealthy",
    "unknown": "The VM health is unknown",
    "initializing": "The VM health is initializing",
}


def guest_status_of(report: GuestReport) -> GuestStatus | None:
    return GuestStatus.from_json(report.guest_status) if report.guest_status else None


def extension_code(extension: ExtensionStatus) -> tuple[str, str, str, str | None]:
    """(code, level, displayStatus, message) of one extension."""
    settled = extension.settings_status
    if extension.handler_status == "NotReady" and extension.handler_code not in (0, None):
        return (
            f"ProvisioningState/failed/{extension.handler_code}",
            "Error",
            "Provisioning failed",
            extension.handler_message,
        )
    if settled is None or settled.status == "transitioning":
        return (
            "ProvisioningState/transitioning",
            "Info",
            "Transitioning",
            settled.message if settled else extension.handler_message,
        )
    if settled.status == "error":
        return f"ProvisioningState/failed/{settled.code}", "Error", "Provisioning failed", settled.message
    level = "Warning" if settled.status == "warning" else "Info"
    return "ProvisioningState/succeeded", level, "Provisioning succeeded", settled.message


def _substatus_view(substatus: SubStatus) -> Json:
    state = {"success": "succeeded", "error": "failed"}.get(substatus.status, substatus.status)
    return {
        "code": f"ComponentStatus/{substatus.name}/{state}",
        "level": "Error" if substatus.status == "error" else "Info",
        "displayStatus": state.capitalize(),
        "message": substatus.message,
    }


def extension_views(status: GuestStatus) -> list[Json]:
    views = []
    for extension in status.extensions:
        code, level, display, message = extension_code(extension)
        settled = extension.settings_status
        views.append(
            {
                "name": extension.name,
                "type": extension.handler_name,
                "typeHandlerVersion": extension.version,
                "statuses": [
                    {
                        "code": code,
                        "level": level,
                        "displayStatus": display,
                        "message": message,
                        "time": (settled.configuration_applied_time or settled.timestamp)
                        if settled
                        else None,
                    }
                ],
                "substatuses": [_substatus_view(s) for s in (settled.substatuses if settled else ())],
            }
        )
    return views


def vm_agent_view(status: GuestStatus) -> Json:
    return {
        "vmAgentVersion": "scaleset",
        "statuses": [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": status.agent_status,
                "message": status.agent_message,
                "time": status.timestamp or None,
            }
        ],
        "extensionHandlers": [
            {
                "type": e.handler_name,
                "typeHandlerVersion": e.version,
                "status": {
                    "code": "ProvisioningState/"
                    + (
                        "failed"
                        if e.handler_status == "NotReady" and e.handler_code not in (0, None)
                        else "succeeded"
                    ),
                    "level": "Info",
                    "displayStatus": e.handler_status,
                    "message": e.handler_message,
                },
            }
            for e in status.extensions
        ],
    }


def health_state(status: GuestStatus) -> str | None:
    """healthy, unhealthy, unknown or initializing, from the Application Health extension; else None."""
    for extension in status.extensions:
        if not extension.handler_name.lower().startswith(APPLICATION_HEALTH):
            continue
        settled = extension.settings_status
        if settled is None:
            return "initializing"
        for substatus in settled.substatuses:
            if substatus.name == "ApplicationHealthState" and substatus.message:
                return substatus.message.lower()
        return "unknown" if settled.status == "error" else "initializing"
    return None


def vm_health_view(state: str) -> Json:
    return {
        "status": {
            "code": f"HealthState/{state}",
            "level": _HEALTH_LEVEL.get(state, "Warning"),
            "displayStatus": _HEALTH_DISPLAY.get(state, state),
        }
    }


def custom_data_status(report: GuestReport) -> Json | None:
    result = report.custom_data
    if result is None:
        return None
    code = {
        "succeeded": "ProvisioningState/succeeded",
        "failed": "ProvisioningState/failed",
        "running": "ProvisioningState/transitioning",
    }[result.state]
    return {
        "code": code,
        "level": "Error" if result.state == "failed" else "Info",
        "displayStatus": f"Custom data {result.state}",
        "message": result.message or None,
    }
