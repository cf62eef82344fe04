"""`GET .../virtualMachineScaleSets/{name}/osUpgradeHistory` (M-14; azure-api.md §1.1, §2.6).

Azure's `VirtualMachineScaleSetListOSUpgradeHistory`: `{value: [UpgradeOperationHistoricalStatusInfo],
nextLink}`, newest attempt first, by default the five newest that started within 60 days
(services/history.py says which runs count and why). Pages hold `--page-size` entries
(Settings.page_size); `nextLink` carries `$skiptoken` = `<offset>-<as-of, µs since the epoch>` (only
characters no client re-encodes), so every page is cut from the same selection. scaleset's own query
parameters, beyond Azure's: `$top` (how many attempts, 1–1000) and `since` (ISO 8601 date or date-time:
the oldest start shown, instead of 60 days back).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request

from scaleset.api.deps import container, require_access
from scaleset.api.views import iso
from scaleset.domain.errors import invalid
from scaleset.services.history import (
    DEFAULT_COUNT,
    MAX_COUNT,
    ROLLBACK_FAILED,
    HistoryEntry,
    HistoryLimits,
    HistoryService,
)

router = APIRouter(dependencies=[Depends(require_access)])
HISTORY = (
    "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
    "/virtualmachinescalesets/{name}/osupgradehistory"
)
ENTRY_TYPE = "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades"
# At most 17 digits of microseconds: any such moment is a valid datetime (before the year 5140).
_TOKEN = re.compile(r"^(\d{1,9})-(\d{1,17})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Json = dict[str, Any]


@router.get(HISTORY)
def os_upgrade_history(request: Request, subscription: str, group: str, name: str) -> Json:
    c = container(request)
    offset, as_of = _skip_token(request)
    page = HistoryService(c.db, c.clock).page(
        subscription,
        group,
        name,
        limits=_limits(request),
        page_size=c.settings.page_size,
        offset=offset,
        as_of=as_of,
    )
    result: Json = {"value": [os_upgrade_entry_view(entry) for entry in page.entries]}
    if page.next_offset is not None:
        query = {k: v for k, v in request.query_params.items() if k != "$skiptoken"}
        query["$skiptoken"] = f"{page.next_offset}-{_micros(page.as_of)}"
        result["nextLink"] = f"{str(request.url).split('?')[0]}?{urlencode(query)}"
    return result


def os_upgrade_entry_view(entry: HistoryEntry) -> Json:
    """`UpgradeOperationHistoricalStatusInfo`: like Azure's, it has no id or name."""
    run = entry.status.run
    running: Json = {"code": run.status, "startTime": iso(run.start_time)}
    if run.end_time is not None:
        running["endTime"] = iso(run.end_time)
    rollback: Json = {
        "successfullyRolledbackInstanceCount": entry.status.rolled_back,
        "failedRolledbackInstanceCount": entry.status.rollback_failed,
    }
    if entry.rollback_errors:
        rollback["rollbackError"] = _rollback_error(entry.rollback_errors)
    properties: Json = {
        "runningStatus": running,
        "progress": entry.status.progress,
        "startedBy": run.started_by if run.started_by in ("User", "Platform") else "Unknown",
        "targetImageReference": entry.target_image,
        "rollbackInfo": rollback,
    }
    if run.error:
        properties["error"] = run.error
    return {"type": ENTRY_TYPE, "location": entry.status.location, "properties": properties}


def _rollback_error(failures: list[tuple[int, str]]) -> Json:
    """An ApiError naming every instance that did not get its previous OS disk back."""
    return {
        "code": ROLLBACK_FAILED,
        "message": f"{len(failures)} instance(s) could not be rolled back to their previous OS disk.",
        "details": [
            {"code": ROLLBACK_FAILED, "target": f"instanceIds/{instance_id}", "message": why or "unknown"}
            for instance_id, why in failures
        ],
    }


# --------------------------------------------------------------------------------- query parameters
def _limits(request: Request) -> HistoryLimits:
    top = request.query_params.get("$top")
    if top is not None and not top.strip().isdigit():
        raise invalid("$top", f"$top must be a whole number between 1 and {MAX_COUNT}; got '{top}'.")
    since = request.query_params.get("since")
    return HistoryLimits(
        count=int(top) if top is not None else DEFAULT_COUNT,
        since=_moment(since) if since is not None else None,
    )


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise invalid(
            "since", f"since must be an ISO 8601 date or date-time (2026-01-31T00:00:00Z); got '{text}'."
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _skip_token(request: Request) -> tuple[int, datetime | None]:
    token = request.query_params.get("$skiptoken")
    if token is None:
        return 0, None
    match = _TOKEN.match(token)
    if match is None:
        raise invalid("$skiptoken", "The page token is not valid; follow nextLink as given.")
    return int(match.group(1)), _EPOCH + timedelta(microseconds=int(match.group(2)))


def _micros(moment: datetime) -> int:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)
