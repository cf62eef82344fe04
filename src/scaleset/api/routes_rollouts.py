"""`GET /providers/Scaleset.Platform/rollouts`: where every platform rollout stands (M-21,
docs/availability-first.md). Scaleset's own endpoint, control-plane wide (a rollout crosses subscriptions
and regions); any token may read it.

Each rollout is a version of an image or an extension (`kind`, `key`, `version`) with its state and,
per phase, the phase's regions, its targets (sets and standalone VMs) and their counts. Query parameters
`kind`, `key` and `version` keep only the matching rollouts (`key` and `kind` ignore case).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from scaleset.api.deps import container, require_access
from scaleset.domain.errors import invalid
from scaleset.services.rollouts import PhaseView, RolloutView, Target

router = APIRouter(dependencies=[Depends(require_access)])
ROLLOUTS = "/providers/Scaleset.Platform/rollouts"
KINDS = ("image", "extension")
COUNTED = ("waiting", "running", "succeeded", "failed", "excluded")


def target_view(target: Target) -> dict[str, Any]:
    provider_type = "virtualMachines" if target.vm is not None else "virtualMachineScaleSets"
    return {
        "id": f"/subscriptions/{target.subscription}/resourceGroups/{target.group}/providers/"
        f"Microsoft.Compute/{provider_type}/{target.name}",
        "name": target.name,
        "type": f"Microsoft.Compute/{provider_type}",
        "location": target.location,
        "state": target.state,
        "rollingUpgradeId": target.run_id,
    }


def phase_view(phase: PhaseView) -> dict[str, Any]:
    return {
        "phase": phase.number,
        "regions": list(phase.regions),
        "state": phase.state,
        "counts": {state: sum(1 for t in phase.targets if t.state == state) for state in COUNTED},
        "targets": [target_view(t) for t in phase.targets],
    }


def rollout_view(rollout: RolloutView) -> dict[str, Any]:
    phases = [phase_view(p) for p in rollout.phases]
    return {
        "kind": rollout.subject.kind,
        "key": rollout.subject.key,
        "version": rollout.subject.version,
        "state": rollout.state,
        "targetCount": sum(len(p.targets) for p in rollout.phases),
        "counts": {state: sum(p["counts"][state] for p in phases) for state in COUNTED},
        "phases": phases,
    }


@router.get(ROLLOUTS)
def list_rollouts(
    request: Request, kind: str | None = None, key: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """Every rollout a platform run belongs to (optionally only those of `kind`, `key`, `version`)."""
    if kind is not None and kind.lower() not in KINDS:
        raise invalid("kind", f"'kind' must be one of {', '.join(KINDS)}.")
    rollouts = [
        r
        for r in container(request).rollouts.list_rollouts()
        if (kind is None or r.subject.kind == kind.lower())
        and (key is None or r.subject.key == key.lower())
        and (version is None or r.subject.version == version)
    ]
    return {"value": [rollout_view(r) for r in rollouts]}
