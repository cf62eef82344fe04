"""Errors in ARM's shape: an HTTP status, a stable CamelCase code, a message and the property at fault.

Raised anywhere below the API (domain, engine, catalog); the API turns them into the ARM envelope
`{"error": {"code", "message", "target", "details"}}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ArmError(Exception):
    status: int
    code: str
    message: str
    target: str | None = None
    details: list[ArmError] = field(default_factory=list)

    def __str__(self) -> str:
        return f"({self.code}) {self.message}"

    def to_body(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.target is not None:
            body["target"] = self.target
        body["details"] = [detail.to_body() for detail in self.details]
        return body


def invalid(target: str, message: str) -> ArmError:
    """400 InvalidParameter: a value of the wrong type or out of range; `target` is its property path."""
    return ArmError(400, "InvalidParameter", message, target)


def not_found(kind: str, name: str, target: str | None = None) -> ArmError:
    return ArmError(404, "ResourceNotFound", f"The {kind} '{name}' could not be found.", target)


def conflict(message: str, target: str | None = None) -> ArmError:
    return ArmError(409, "Conflict", message, target)


def operation_not_allowed(message: str, target: str | None = None) -> ArmError:
    return ArmError(409, "OperationNotAllowed", message, target)
