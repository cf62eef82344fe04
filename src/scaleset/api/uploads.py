"""Receiving an uploaded artifact into a temporary file, with a size limit, removed afterwards."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Request

from scaleset.domain.errors import ArmError, invalid

MAX_UPLOAD_BYTES = 512 * 2**20


@asynccontextmanager
async def receive_upload(request: Request, directory: Path, what: str) -> AsyncIterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".artifact", delete=False) as handle:
        path = Path(handle.name)
    try:
        size = 0
        with path.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise ArmError(
                        413,
                        "RequestEntityTooLarge",
                        f"An artifact is at most {MAX_UPLOAD_BYTES // 2**20} MiB.",
                        "body",
                    )
                out.write(chunk)
        if size == 0:
            raise invalid("body", f"The request body must be {what}.")
        yield path
    finally:
        path.unlink(missing_ok=True)
