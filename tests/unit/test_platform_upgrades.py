"""Automatic OS image upgrades started by the platform, on the simulated fleet and virtual time
(M-7, M-8, M-10, M-12; azure-api.md §2.2 AutomaticOSUpgradePolicy, §4.2).

The services, the executor and the rolling loop run on a real database (`tests/fleet.py`'s
`Fleet` drives them by hand); publishing goes through the catalog, so the platform hears of it as it does
in the server. What is checked is what a user sees: which sets get a run, who started it, its batches,
the images instances end on, and that a version rolled back on a set is never offered to it again by
itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from scaleset.domain.errors import ArmError
from scaleset.domain.rolling import UNHEALTHY_BEFORE, UNHEALTHY_UPGRADED
from scaleset.providers.sim import Fault
from scaleset.services.platform import GATE_RETRY
from scaleset.store.tables import BlockedImageVersion, RollingUpgrade, ScaleSet
from tests.fleet import (
    BOOT_SECONDS,
    GROUP,
    PROBE_ID,
    SUB,
    Fleet,
    fleet_on_copy,
    prepare_data,
)
from tests.support import scale_set_body

Json = dict[str, Any]
AUTO_TARGET = "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade"


def publish(fleet: Fleet, version: str, *, supported: bool = True, sku: str = "stable") -> None:
    fleet.publish(version, sku=sku, supported=supported)


def auto_body(
    capacity: int,
    *,
    mode: str = "Rolling",
    rolling: Json | None = None,
    probe: bool = True,
    **auto: Any,
) -> Json:
    """A set on scaleset:webapp:stable:latest with automatic OS upgrade on (unless `auto` says otherwise)."""
    policy: Json = {"mode": mode, "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True, **auto}}
    if rolling is not None:
        policy["rollingUpgradePolicy"] = rolling
    body = scale_set_body(capacity, version="latest", upgradePolicy=policy)
    if probe:
        body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    return body


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_data(tmp_path_factory.mktemp("platform-prepared"), supported=True)


@pytest.fixture
def fleet(tmp_path: Path, prepared: Path) -> Iterator[Fleet]:
    yield from fleet_on_copy(prepared, tmp_path)


# ------------------------------------------------------------------------------------------- helpers
def create(fleet: Fleet, name: str, body: Json) -> None:
    fleet.container.scalesets.put_set(SUB, GROUP, name, body)
    fleet.run()
    fleet.clock.advance(BOOT_SECONDS)


def runs(fleet: Fleet, name: str) -> list[RollingUpgrade]:
    with fleet.container.db.read() as session:
        set_id = session.scalar(select(ScaleSet.id).where(ScaleSet.name == name))
        return list(
            session.scalars(
                select(RollingUpgrade)
                .where(RollingUpgrade.set_id == set_id)
                .order_by(RollingUpgrade.start_time)
            )
        )


def images(fleet: Fleet, name: str) -> dict[int, str]:
    return {
        i.instance_id: i.image_version for i in fleet.container.scalesets.list_instances(SUB, GROUP, name)[1]
    }


def batch_sizes(fleet: Fleet, run: RollingUpgrade) -> list[int]:
    sizes: dict[int, int] = {}
    for member in fleet.members():
        if member.upgrade_id == run.id:
            sizes[member.batch] = sizes.get(member.batch, 0) + 1
    return [sizes[b] for b in sorted(sizes)]


def blocked(fleet: Fleet, name: str) -> list[str]:
    return [
        b.image_version
        for b in fleet.container.platform.list_blocked(SUB, GROUP, name)
        if b.cleared_at is None
    ]


def the_set(fleet: Fleet, name: str) -> ScaleSet:
    return fleet.container.scalesets.get_set(SUB, GROUP, name)


# ------------------------------------------------------------------------------ publish starts runs
def test_a_publish_upgrades_every_opted_in_set_at_once_and_no_other(fleet: Fleet) -> None:
    """M-8: publishing 1.1.0 starts a Platform OS upgrade on each opted-in set in the same moment, with
    Azure's default policy (20 % batches, rollback on); a set without the policy is left alone."""
    create(fleet, "web", auto_body(10))
    create(fleet, "api", auto_body(5, mode="Automatic"))
    create(fleet, "manual", auto_body(5, enableAutomaticOSUpgrade=False))
    published_at = fleet.clock.now()

    publish(fleet, "1.1.0")

    started = {name: runs(fleet, name) for name in ("web", "api", "manual")}
    assert started["manual"] == []
    for name in ("web", "api"):
        (run,) = started[name]
        assert (run.kind, run.started_by, run.target_image_version) == ("os", "Platform", "1.1.0")
        assert run.start_time.replace(tzinfo=published_at.tzinfo) == published_at
        assert run.rollback_on_breach is True
        assert run.policy["maxBatchInstancePercent"] == 20
        assert run.policy["maxUnhealthyUpgradedInstancePercent"] == 20
        assert run.policy["pauseTimeBetweenBatches"] == "PT0S"
        assert run.policy["rollbackFailedInstancesOnPolicyBreach"] is True

    fleet.run()

    assert set(images(fleet, "web").values()) == {"1.1.0"}
    assert set(images(fleet, "api").values()) == {"1.1.0"}
    assert set(images(fleet, "manual").values()) == {"1.0.0"}
    (web_run,) = runs(fleet, "web")
    assert web_run.status == "Completed"
    assert batch_sizes(fleet, web_run) == [2, 2, 2, 2, 2]  # 20 % of 10, whatever the set's mode
    assert the_set(fleet, "web").exact_image_version == "1.1.0"


def test_use_rolling_upgrade_policy_takes_the_sets_own_batches(fleet: Fleet) -> None:
    """azure-api.md §2.2: the set's rollingUpgradePolicy only with useRollingUpgradePolicy (10 % of 10 →
    batches of one); otherwise Azure's 20 % (batches of two, one update domain each)."""
    own = {"maxBatchInstancePercent": 10}
    create(fleet, "own", auto_body(10, rolling=own, useRollingUpgradePolicy=True))
    create(fleet, "default", auto_body(10, rolling=own))

    publish(fleet, "1.1.0")
    fleet.run()

    (own_run,) = runs(fleet, "own")
    (default_run,) = runs(fleet, "default")
    assert own_run.policy["maxBatchInstancePercent"] == 10
    assert batch_sizes(fleet, own_run) == [1] * 10
    assert default_run.policy["maxBatchInstancePercent"] == 20
    assert batch_sizes(fleet, default_run) == [2] * 5
    assert own_run.status == default_run.status == "Completed"


def test_a_newer_image_without_the_supported_mark_is_not_offered(fleet: Fleet) -> None:
    """M-12: only versions whose manifest sets automaticOSUpgradeSupported are applied by the platform."""
    create(fleet, "web", auto_body(3))
    publish(fleet, "1.1.0", supported=False)
    fleet.container.platform.sweep()

    assert runs(fleet, "web") == []
    assert set(images(fleet, "web").values()) == {"1.0.0"}


# --------------------------------------------------------------------------------- the loop guard
def test_a_bad_version_rolls_back_is_blocked_and_never_comes_back_by_itself(fleet: Fleet) -> None:
    """M-10 newer: automatic rollback is on by default for platform upgrades (the set's own
    rollbackFailedInstancesOnPolicyBreach is false here). The rolled-back version is blocked on the set:
    no sweep, no later run end and no plain PUT brings it back; a newer version is offered as usual."""
    create(fleet, "web", auto_body(5))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))

    publish(fleet, "2.0.0")
    fleet.run()

    (bad,) = runs(fleet, "web")
    assert (bad.status, bad.started_by, bad.rollback_on_breach) == ("Faulted", "Platform", True)
    assert bad.error is not None and bad.error["code"] == UNHEALTHY_UPGRADED
    assert {m.state for m in fleet.members()} == {"rolled_back"}
    assert set(images(fleet, "web").values()) == {"1.0.0"}
    assert blocked(fleet, "web") == ["2.0.0"]
    # The set's model went back to the image that works, so new instances do not start on 2.0.0, and
    # the instances that run it are on the latest model.
    scale_set = the_set(fleet, "web")
    assert scale_set.exact_image_version == "1.0.0"
    assert {i.model_version for i in fleet.instances()} == {scale_set.model_version}

    for _ in range(3):  # sweeps, hours apart: Azure's "retry later" must not retry a known-bad version
        fleet.clock.advance(3600)
        assert fleet.container.platform.sweep() == []
    body = auto_body(6)  # a plain PUT (scale out by one) resolves 'latest' past the blocked version
    fleet.container.scalesets.put_set(SUB, GROUP, "web", body)
    fleet.run()
    assert the_set(fleet, "web").exact_image_version == "1.0.0"
    assert set(images(fleet, "web").values()) == {"1.0.0"}
    assert len(runs(fleet, "web")) == 1

    fleet.clock.advance(BOOT_SECONDS)
    publish(fleet, "2.0.1")
    fleet.run()

    assert [r.target_image_version for r in runs(fleet, "web")] == ["2.0.0", "2.0.1"]
    assert runs(fleet, "web")[1].status == "Completed"
    assert set(images(fleet, "web").values()) == {"2.0.1"}
    assert blocked(fleet, "web") == ["2.0.0"]  # still known bad, just no longer the newest


def test_an_instance_that_stays_unhealthy_gets_its_previous_os_disk_and_the_upgrade_goes_on(
    fleet: Fleet,
) -> None:
    """M-10 newer: "an instance not healthy within 5 minutes gets its previous OS disk back" — at once, not
    only when the policy is breached. One bad instance of ten stays under the 20 % of upgraded instances,
    so the run goes on and completes; that instance is back on 1.0.0 (its old disk), and since the policy
    held, 2.0.0 is not blocked and not offered again either (the platform tried it once)."""
    create(fleet, "web", auto_body(10, rolling={"maxUnhealthyUpgradedInstancePercent": 20}))
    key = f"{the_set(fleet, 'web').uid}/9"
    fleet.sim.add_fault(Fault("hang", image="2.0.0", keys={key}))
    disks = {i.instance_id: i.os_disk_generation for i in fleet.instances()}

    publish(fleet, "2.0.0")
    fleet.run()

    (run,) = runs(fleet, "web")
    assert (run.status, run.roll_back_each_failure) == ("Completed", True)
    states = {m.instance_id: m.state for m in fleet.members()}
    assert states.pop(9) == "rolled_back"
    assert set(states.values()) == {"succeeded"}
    assert images(fleet, "web") == {**{i: "2.0.0" for i in range(9)}, 9: "1.0.0"}
    assert {i.instance_id: i.os_disk_generation for i in fleet.instances()}[9] == disks[9]
    assert blocked(fleet, "web") == []
    assert the_set(fleet, "web").exact_image_version == "2.0.0"
    fleet.clock.advance(3600)
    assert fleet.container.platform.sweep() == []


def test_deleting_a_set_removes_its_blocked_versions(fleet: Fleet) -> None:
    """Blocks are keyed by the set's uid with no foreign key: the set's removal takes them with it."""
    create(fleet, "web", auto_body(2))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))
    publish(fleet, "2.0.0")
    fleet.run()
    assert blocked(fleet, "web") == ["2.0.0"]

    fleet.container.scalesets.delete_set(SUB, GROUP, "web")
    fleet.run()

    with fleet.container.db.read() as session:
        assert session.scalars(select(BlockedImageVersion)).all() == []


def test_an_operator_clear_offers_the_blocked_version_again(fleet: Fleet) -> None:
    """The way out of a block besides a newer version: the operator clears it (say, after fixing the
    health probe), and the platform upgrades at once."""
    create(fleet, "web", auto_body(3))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))
    publish(fleet, "2.0.0")
    fleet.run()
    assert blocked(fleet, "web") == ["2.0.0"]
    fleet.sim.clear_faults()
    fleet.clock.advance(BOOT_SECONDS)

    cleared = fleet.container.platform.clear_blocked(SUB, GROUP, "web")

    assert [c.image_version for c in cleared] == ["2.0.0"]
    assert blocked(fleet, "web") == []
    again = runs(fleet, "web")
    assert [(r.target_image_version, r.status) for r in again] == [
        ("2.0.0", "Faulted"),
        ("2.0.0", "RollingForward"),
    ]
    fleet.run()
    assert runs(fleet, "web")[1].status == "Completed"
    assert set(images(fleet, "web").values()) == {"2.0.0"}
    # Clearing what is not blocked clears nothing; a malformed version is refused.
    assert fleet.container.platform.clear_blocked(SUB, GROUP, "web", ["2.0.0"]) == []
    with pytest.raises(ArmError) as refused:
        fleet.container.platform.clear_blocked(SUB, GROUP, "web", ["two"])
    assert (refused.value.status, refused.value.target) == (400, "versions[0]")


def test_without_automatic_rollback_a_faulted_version_is_not_retried_either(fleet: Fleet) -> None:
    """disableAutomaticRollback: the failed batch stays on the new image (nothing to block), and the
    platform still does not start the same version again: it tried it once."""
    create(fleet, "web", auto_body(5, disableAutomaticRollback=True))
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))

    publish(fleet, "2.0.0")
    fleet.run()

    (run,) = runs(fleet, "web")
    assert (run.status, run.rollback_on_breach) == ("Faulted", False)
    assert run.policy["rollbackFailedInstancesOnPolicyBreach"] is False
    assert {m.state for m in fleet.members()} == {"failed"}
    assert sorted(images(fleet, "web").values()) == ["1.0.0"] * 4 + ["2.0.0"]
    assert blocked(fleet, "web") == []
    fleet.clock.advance(3600)
    assert fleet.container.platform.sweep() == []
    assert len(runs(fleet, "web")) == 1


# ------------------------------------------------------------------------------ when runs start
def test_switching_the_policy_off_stops_new_platform_upgrades(fleet: Fleet) -> None:
    """M-7: it can be switched off at any time (PATCH); a publish afterwards starts nothing."""
    create(fleet, "web", auto_body(3))
    fleet.container.scalesets.patch_set(
        SUB,
        GROUP,
        "web",
        {"properties": {"upgradePolicy": {"automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": False}}}},
    )
    fleet.run()

    publish(fleet, "1.1.0")
    fleet.container.platform.sweep()

    assert runs(fleet, "web") == []
    assert set(images(fleet, "web").values()) == {"1.0.0"}


def test_a_busy_set_gets_its_platform_upgrade_when_its_run_ends(fleet: Fleet) -> None:
    """A version published while the set runs another upgrade is not lost: the platform starts it the
    moment that run ends."""
    create(fleet, "web", auto_body(5))
    publish(fleet, "1.1.0")  # the platform run towards 1.1.0 starts
    fleet.tick()

    publish(fleet, "1.2.0")  # published mid-run
    assert [r.target_image_version for r in runs(fleet, "web")] == ["1.1.0"]

    fleet.run()

    assert [(r.target_image_version, r.status) for r in runs(fleet, "web")] == [
        ("1.1.0", "Completed"),
        ("1.2.0", "Completed"),
    ]
    assert set(images(fleet, "web").values()) == {"1.2.0"}


def test_a_run_stopped_at_the_gate_is_tried_again_later(fleet: Fleet) -> None:
    """M-10 step 1: a set too unhealthy to start (2 of 5 stopped) faults before touching anything. That says
    nothing against the version, so the platform tries again, though not before GATE_RETRY has passed."""
    create(fleet, "web", auto_body(5))
    fleet.container.scalesets.set_action(SUB, GROUP, "web", "stop", {"instanceIds": ["1", "2"]})
    fleet.run()

    publish(fleet, "1.1.0")
    fleet.run()

    (gated,) = runs(fleet, "web")
    assert gated.status == "Faulted" and gated.error is not None
    assert gated.error["code"] == UNHEALTHY_BEFORE
    assert batch_sizes(fleet, gated) == []
    fleet.container.scalesets.set_action(SUB, GROUP, "web", "start", {"instanceIds": ["1", "2"]})
    fleet.run()
    fleet.clock.advance(BOOT_SECONDS)
    assert fleet.container.platform.sweep() == []  # too soon

    fleet.clock.advance(GATE_RETRY.total_seconds())
    assert len(fleet.container.platform.sweep()) == 1
    fleet.run()

    assert [r.status for r in runs(fleet, "web")] == ["Faulted", "Completed"]
    assert set(images(fleet, "web").values()) == {"1.1.0"}


def test_the_sweep_finds_what_a_crash_lost(fleet: Fleet) -> None:
    """M-26: a publish whose listener never ran (the server died right after the commit) and a rollback
    whose outcome was never recorded are both found by the sweep the engine runs at start."""
    create(fleet, "web", auto_body(3))
    listeners = list(fleet.container.catalog.on_publish)
    fleet.container.catalog.on_publish.clear()
    fleet.container.rolling.on_finish.remove(fleet.container.platform.on_run_finished)
    fleet.sim.add_fault(Fault("hang", image="2.0.0"))
    publish(fleet, "2.0.0")
    assert runs(fleet, "web") == []

    assert fleet.container.platform.reconcile() is False  # the first pass of an engine sweeps
    assert [r.target_image_version for r in runs(fleet, "web")] == ["2.0.0"]
    fleet.run()
    assert runs(fleet, "web")[0].status == "Faulted"
    assert blocked(fleet, "web") == []  # nobody heard the run end...

    started = fleet.container.platform.sweep()

    assert started == []  # ...the sweep records the block before it decides, so 2.0.0 is not retried
    assert blocked(fleet, "web") == ["2.0.0"]
    assert the_set(fleet, "web").exact_image_version == "1.0.0"
    fleet.container.catalog.on_publish.extend(listeners)


def test_a_deferred_upgrade_waits_for_approval(fleet: Fleet) -> None:
    """osRollingUpgradeDeferral: the platform holds the upgrade until approveRollingUpgrade."""
    create(fleet, "web", auto_body(3, osRollingUpgradeDeferral=True))
    with pytest.raises(ArmError) as nothing:
        fleet.container.platform.approve(SUB, GROUP, "web")
    assert (nothing.value.status, nothing.value.code) == (409, "OperationNotAllowed")

    publish(fleet, "1.1.0")
    fleet.container.platform.sweep()
    assert runs(fleet, "web") == []

    operation = fleet.container.platform.approve(SUB, GROUP, "web")
    fleet.run()

    (run,) = runs(fleet, "web")
    assert (run.started_by, run.status, run.operation_id) == ("Platform", "Completed", operation.id)
    assert set(images(fleet, "web").values()) == {"1.1.0"}


def test_switching_it_on_in_manual_mode_catches_instances_up_once(fleet: Fleet) -> None:
    """A Manual set whose model already names the newest image but whose instances run an older one gets
    one platform run when automatic upgrade is switched on (auto upgrades ignore the mode)."""
    create(fleet, "web", auto_body(3, mode="Manual", enableAutomaticOSUpgrade=False))
    publish(fleet, "1.1.0")
    fleet.container.scalesets.put_set(
        SUB, GROUP, "web", auto_body(3, mode="Manual", enableAutomaticOSUpgrade=False)
    )
    fleet.run()
    assert the_set(fleet, "web").exact_image_version == "1.1.0"
    assert set(images(fleet, "web").values()) == {"1.0.0"}

    fleet.container.scalesets.put_set(SUB, GROUP, "web", auto_body(3, mode="Manual"))
    assert fleet.container.platform.sweep() != []
    fleet.run()

    assert set(images(fleet, "web").values()) == {"1.1.0"}
    assert fleet.container.platform.sweep() == []


# ------------------------------------------------------------------------------------ validation
def test_enabling_needs_latest_a_health_source_and_a_supported_image(fleet: Fleet) -> None:
    """M-7, M-11, M-12: each refusal is a 400 naming the rule; nothing is written."""
    publish(fleet, "1.0.0", supported=False, sku="plain")

    def refused(body: Json) -> ArmError:
        with pytest.raises(ArmError) as caught:
            fleet.container.scalesets.put_set(SUB, GROUP, "bad", body)
        return caught.value

    pinned = auto_body(2)
    pinned["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["version"] = "1.0.0"
    no_health = auto_body(2, mode="Automatic", probe=False)
    unsupported = auto_body(2)
    unsupported["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = "plain"
    for body, words in ((pinned, "'latest'"), (no_health, "health source"), (unsupported, "not supported")):
        error = refused(copy.deepcopy(body))
        assert (error.status, error.code, error.target) == (400, "InvalidParameter", AUTO_TARGET)
        assert words in error.message
    with pytest.raises(ArmError) as missing:
        fleet.container.scalesets.get_set(SUB, GROUP, "bad")
    assert missing.value.status == 404

    # The same set without the policy is fine, and PATCH switches it on only where the image allows it.
    plain = copy.deepcopy(unsupported)
    plain["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"]["enableAutomaticOSUpgrade"] = False
    fleet.container.scalesets.put_set(SUB, GROUP, "plain", plain)
    on = {"properties": {"upgradePolicy": {"automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}}}}
    with pytest.raises(ArmError) as patch_refused:
        fleet.container.scalesets.patch_set(SUB, GROUP, "plain", on)
    assert (patch_refused.value.status, patch_refused.value.target) == (400, AUTO_TARGET)
    stored = the_set(fleet, "plain").document["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"]
    assert stored["enableAutomaticOSUpgrade"] is False
