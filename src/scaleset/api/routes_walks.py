"""(being written) ARM-style routes: walks."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from scaleset.api.deps import require_access

router = APIRouter(dependencies=[Depends(require_access)])
