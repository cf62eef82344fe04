"""scaleset's own endpoint: the plan of a rolling upgrade before it runs (docs/plan-preview.md).

`GET …/virtualMachineScaleSets/{name}/rollingUpgrades/scalesetPlan`. The last segment carries our name
so that it can never clash with an operation Azure adds under `rollingUpgrades/` (it has `latest` and
`cancel`). It is a GET, so a reader may preview; nothing is written.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from scaleset.api.deps import container, require_access
from scaleset.domain.plan import PlannedBatch, PlannedInstance, UpgradePlan, format_duration
from scaleset.services.plan import PlanPreview, PlanService, policy_overrides

router = APIRouter(dependencies=[Depends(require_access)])
PLAN = (
    "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
    "/virtualmachinescalesets/{name}/rollingupgrades/scalesetplan"
)
# Query parameters that are not policy fields.
_NOT_POLICY = {"api-version", "upgrade"}


def plan_service(request: Request) -> PlanService:
    """Built from the container's parts (the engine's own health reader, so the verdicts and the probe
    streaks are the ones the engine sees)."""
    c = container(request)
    return PlanService(c.db, c.catalog, c.health, c.loadbalancers.probe_settings, c.settings.instance_quota)


@router.get(PLAN)
def preview_rolling_upgrade(request: Request, subscription: str, group: str, name: str) -> dict[str, Any]:
    query = request.query_params
    policy = {k: v for k, v in query.items() if k.lower() not in _NOT_POLICY}
    preview = plan_service(request).preview(
        subscription, group, name, query.get("upgrade", "os").lower(), policy_overrides(policy)
    )
    return plan_view(preview)


# ------------------------------------------------------------------------------------------------ views
def plan_view(preview: PlanPreview) -> dict[str, Any]:
    plan = preview.plan
    run = preview.active_run
    return {
        "upgrade": preview.kind,
        "targetModelVersion": preview.target_model_version,
        "targetImageVersion": preview.target_image_version,
        "policy": preview.policy,
        "activeRun": None
        if run is None
        else {
            "id": run.id,
            "kind": run.kind,
            "status": run.status,
            "batchesStarted": run.batches_started,
            "cancelRequested": run.cancel_requested,
        },
        "instanceCount": plan.instance_count,
        "batchSize": plan.batch_size,
        "gate": {"verdict": plan.gate.verdict, "code": plan.gate.code, "message": plan.gate.message},
        "unhealthyInstanceIds": [str(i) for i in plan.unhealthy_ids],
        "batches": [_batch_view(b) for b in plan.batches],
        "skipped": [{"instanceId": str(s.instance_id), "reason": s.reason} for s in plan.skipped],
        "outOfService": {
            "worst": plan.worst_out_of_service,
            "budget": plan.unhealthy_budget,
            "exceedsBudget": plan.worst_out_of_service > plan.unhealthy_budget,
            "peakInstanceCount": plan.peak_instance_count,
        },
        "duration": _duration_view(plan),
        "summary": plan.summary(),
    }


def _batch_view(batch: PlannedBatch) -> dict[str, Any]:
    return {
        "batch": batch.number,
        "instanceIds": [str(i) for i in batch.instance_ids],
        "zones": list(batch.zones),
        "updateDomain": batch.update_domain,
        "outOfService": batch.out_of_service,
        "surge": batch.surge,
        "instances": [_instance_view(i) for i in batch.instances],
    }


def _instance_view(instance: PlannedInstance) -> dict[str, Any]:
    return {
        "instanceId": str(instance.instance_id),
        "zone": instance.zone,
        "updateDomain": instance.update_domain,
        "healthy": instance.healthy,
    }


def _duration_view(plan: UpgradePlan) -> dict[str, Any]:
    return {
        "minimum": format_duration(plan.shortest),
        "maximum": format_duration(plan.longest),
        "minimumSeconds": int(plan.shortest.total_seconds()),
        "maximumSeconds": int(plan.longest.total_seconds()),
        "healthSource": plan.timing.source,
        "quickestHealthVerdict": format_duration(plan.timing.quickest),
        "healthWait": format_duration(plan.timing.timeout),
        "pauseTimeBetweenBatches": format_duration(plan.pause),
    }
