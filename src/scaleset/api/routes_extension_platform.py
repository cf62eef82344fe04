"""(stub, session 4: filled in by issue 5's extension platform work)"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from scaleset.api.deps import require_access

router = APIRouter(dependencies=[Depends(require_access)])
