"""Goal states from model history and the verdict on a guest's report (issue 3; M-9, M-11, M-23)."""

from __future__ import annotations

from typing import Any

import pytest

from scaleset.catalog.extensions import resolve_handler_version
from scaleset.engine.guest_goal import (
    ExtensionUnavailable,
    GuestExpectation,
    goal_state_for,
    judge_guest,
    sequence_number,
)
from scaleset.guest.goalstate import ExtensionStatus, GuestStatus, SettingsStatus, SubStatus
from scaleset.providers.base import CustomDataResult, GuestReport


def model(*extensions: dict[str, Any]) -> dict[str, Any]:
    return {"extensionProfile": {"extensions": list(extensions)}}


def ext(name: str, **properties: Any) -> dict[str, Any]:
    base = {"publisher": "Contoso", "type": "Probe", "typeHandlerVersion": "1.0", "settings": {"a": 1}}
    return {"name": name, "properties": {**base, **properties}}


def resolve(
    publisher: str, type_: str, version: str, auto: bool, pinned: str | None
) -> tuple[str, str] | None:
    published = ["1.0.0", "1.0.3", "1.2.0", "2.0.0"]
    if pinned is not None:
        chosen: str | None = pinned if pinned in published else None
    else:
        chosen = resolve_handler_version(version, published, auto)
    return (chosen, f"/catalog/{publisher}/{type_}/{chosen}") if chosen else None


def no_encryption(sealed: str) -> tuple[str, str]:
    return f"cms({sealed})", "THUMB"


@pytest.mark.parametrize(
    ("requested", "auto", "expected"),
    [
        ("1.0", False, "1.0.3"),
        ("1.0", True, "1.2.0"),
        ("1.2", False, "1.2.0"),
        ("2.0", True, "2.0.0"),
        ("3.0", True, None),
        ("1.5", True, None),
    ],
)
def test_handler_version_resolution_never_crosses_a_major(
    requested: str, auto: bool, expected: str | None
) -> None:
    assert resolve_handler_version(requested, ["1.0.0", "1.0.3", "1.2.0", "2.0.0"], auto) == expected


def test_sequence_number_changes_only_with_the_extensions_own_configuration() -> None:
    history = [
        (1, model(ext("a"), ext("b", type="B"))),
        (2, model(ext("a"), ext("b", type="B", settings={"a": 2}))),  # b changes
        (
            3,
            {**model(ext("a"), ext("b", type="B", settings={"a": 2})), "osProfile": {"x": 1}},
        ),  # unrelated change
    ]
    assert sequence_number(history, "a") == 1
    assert sequence_number(history, "b") == 2


def test_force_update_tag_makes_a_new_sequence_number() -> None:
    history = [(1, model(ext("a"))), (2, model(ext("a", forceUpdateTag="x")))]
    assert sequence_number(history, "a") == 2


def test_goal_state_resolves_versions_orders_and_encrypts() -> None:
    history = [
        (
            4,
            model(
                ext("health", provisionAfterExtensions=[]),
                ext(
                    "script",
                    type="Script",
                    typeHandlerVersion="1.0",
                    autoUpgradeMinorVersion=False,
                    protectedSettingsSealed="sealed",
                    provisionAfterExtensions=["health"],
                    suppressFailures=True,
                ),
            ),
        )
    ]

    goal = goal_state_for(history, resolve, no_encryption)

    assert goal.incarnation == 4
    health, script = goal.extensions
    assert (health.version, script.version) == ("1.2.0", "1.0.3")  # auto minor by default, not when off
    assert script.protected_settings == "cms(sealed)" and script.thumbprint == "THUMB"
    assert health.protected_settings is None
    assert script.provision_after == ("health",) and script.suppress_failures is True
    assert health.package_dir == "/catalog/Contoso/Probe/1.2.0"
    assert script.package_dir == "/catalog/Contoso/Script/1.0.3"


def test_a_pinned_version_wins_over_the_newest_minor() -> None:
    """A model version's pins (M-19: a rollback gets the previous version back) are used as they are,
    an extension without a pin is resolved from its typeHandlerVersion."""
    history = [(2, model(ext("health"), ext("script", type="Script")))]

    goal = goal_state_for(history, resolve, no_encryption, {"HEALTH": "1.0.0"})

    health, script = goal.extensions
    assert (health.version, script.version) == ("1.0.0", "1.2.0")
    assert health.package_dir == "/catalog/Contoso/Probe/1.0.0"
    with pytest.raises(ExtensionUnavailable):
        goal_state_for(history, resolve, no_encryption, {"health": "1.0.9"})


def test_no_extensions_no_goal_state_and_missing_versions_are_errors() -> None:
    empty = goal_state_for([(1, model())], resolve, no_encryption)
    assert (empty.incarnation, empty.extensions) == (1, ())
    with pytest.raises(ExtensionUnavailable, match=r"3\.0"):
        goal_state_for([(1, model(ext("a", typeHandlerVersion="3.0")))], resolve, no_encryption)


def guest(incarnation: int | None, *extensions: ExtensionStatus) -> str:
    return GuestStatus(
        incarnation_applied=incarnation, incarnation_applying=None, extensions=extensions
    ).to_json()


def extension(name: str, status: str | None, handler_code: int = 0, message: str = "m") -> ExtensionStatus:
    settled = (
        None
        if status is None
        else SettingsStatus(
            1, status, 0, message, "Enable", (SubStatus("ApplicationHealthState", "success", 0, "Healthy"),)
        )
    )
    return ExtensionStatus(
        name,
        "Contoso.Probe",
        "1.0.0",
        1,
        "Enabled" if not handler_code else "Installed",
        "Ready" if not handler_code else "NotReady",
        handler_code,
        message,
        settled,
    )


EXPECT = GuestExpectation(incarnation=3, extensions=(("a", False), ("b", True)), custom_data=True)


@pytest.mark.parametrize(
    ("report", "done", "failure"),
    [
        (GuestReport(), False, None),
        (GuestReport(CustomDataResult("running")), False, None),
        (GuestReport(CustomDataResult("failed", 2, "boom")), True, "Custom data failed: boom"),
        (GuestReport(CustomDataResult("succeeded", 0), None), False, None),
        (GuestReport(CustomDataResult("succeeded", 0), guest(2, extension("a", "success"))), False, None),
        (GuestReport(CustomDataResult("succeeded", 0), guest(3, extension("a", "success"))), False, None),
        (
            GuestReport(
                CustomDataResult("succeeded", 0),
                guest(3, extension("a", "success"), extension("b", "transitioning")),
            ),
            False,
            None,
        ),
        (
            GuestReport(
                CustomDataResult("succeeded", 0),
                guest(3, extension("a", "success"), extension("b", "success")),
            ),
            True,
            None,
        ),
        # b's failure is suppressed (suppressFailures); a's is not.
        (
            GuestReport(
                CustomDataResult("succeeded", 0), guest(3, extension("a", "success"), extension("b", "error"))
            ),
            True,
            None,
        ),
        (
            GuestReport(
                CustomDataResult("succeeded", 0),
                guest(3, extension("a", "error", message="bad"), extension("b", "success")),
            ),
            True,
            "Extension 'a' failed: bad",
        ),
        (
            GuestReport(
                CustomDataResult("succeeded", 0),
                guest(
                    3,
                    extension("a", None, handler_code=1009, message="enable failed"),
                    extension("b", "success"),
                ),
            ),
            True,
            "Extension 'a' failed: enable failed",
        ),
    ],
)
def test_judging_a_guest_report(report: GuestReport, done: bool, failure: str | None) -> None:
    verdict = judge_guest(report, EXPECT)
    assert (verdict.done, verdict.failure) == (done, failure)


def test_expectation_round_trips() -> None:
    assert GuestExpectation.from_json(EXPECT.to_json()) == EXPECT
    assert not GuestExpectation(None, (), False).waits
