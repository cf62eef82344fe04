"""(being written) metrics routes; they do their own authentication."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
