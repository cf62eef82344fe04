"""Extension versions pinned per model version, and per-failure restores (M-18, M-19, M-22).

On the simulated fleet with virtual time: a model version records the exact handler version of each of its
extensions; an instance put back on an earlier model version gets that version back through an `extensions`
update (no reimage); a run with `roll_back_each_failure` rolls each failed member back as soon as its batch is
judged and goes on, unless maxUnhealthyUpgradedInstancePercent is breached.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from scaleset.domain.auto_upgrade import PLATFORM
from scaleset.guest.builtin import builtin_packages
from scaleset.providers.sim import Fault
from scaleset.services.runs import begin_run, new_model_version
from scaleset.store.tables import ScaleSet, ScaleSetModel, Task
from tests.fleet import GROUP, NAME, SUB, Fleet, fleet_on_copy, prepare_data, rolling_body

PUBLISHER, TYPE = "Microsoft.Azure.Extensions", "CustomScript"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_data(tmp_path_factory.mktemp("prepared"))


@pytest.fixture
def fleet(tmp_path: Path, prepared: Path) -> Iterator[Fleet]:
    yield from fleet_on_copy(prepared, tmp_path)


def publish_custom_script(fleet: Fleet, version: str) -> None:
    """Another version of the built-in CustomScript handler (the sim runs no handler code)."""
    package = next(p for p in builtin_packages() if p.type == TYPE)
    artifact = package.assemble(fleet.root / f"custom-script-{version}")
    fleet.container.extensions.publish(PUBLISHER, TYPE, version, artifact)


def with_script(body: dict[str, Any], **properties: Any) -> dict[str, Any]:
    body["properties"]["virtualMachineProfile"]["extensionProfile"] = {
        "extensions": [
            {
                "name": "hello",
                "properties": {
                    "publisher": PUBLISHER,
                    "type": TYPE,
                    "typeHandlerVersion": "2.1",
                    "settings": {"commandToExecute": "echo hi"},
                    **properties,
                },
            }
        ]
    }
    return body


def models(fleet: Fleet) -> dict[int, dict[str, Any] | None]:
    with fleet.container.db.read() as session:
        return {m.version: m.extension_versions for m in session.scalars(select(ScaleSetModel))}


def running_versions(fleet: Fleet) -> dict[int, str]:
    """Each instance's CustomScript version, as its goal state resolved it."""
    return {i.instance_id: (i.extension_versions or {}).get("hello", "") for i in fleet.instances()}


def start_platform_extension_run(fleet: Fleet, version: str, **policy: Any) -> str:
    """What the automatic extension upgrade writes: a model version moving `hello` to `version`, and a
    platform run of kind `extension` that rolls each failure back."""
    now = fleet.clock.now()
    with fleet.container.db.write() as session:
        scale_set = session.scalars(select(ScaleSet).where(ScaleSet.name == NAME)).one()
        new_model_version(
            session, scale_set, scale_set.exact_image_version, now, extension_overrides={"hello": version}
        )
        run = begin_run(
            session,
            scale_set,
            kind="extension",
            started_by=PLATFORM,
            rollback_on_breach=True,
            now=now,
            policy={**scale_set.document["properties"]["upgradePolicy"]["rollingUpgradePolicy"], **policy},
        )
        run.roll_back_each_failure = True
        run_id = run.id
    fleet.container.executor.wake()
    return run_id


def instance_key(fleet: Fleet, instance_id: int) -> str:
    with fleet.container.db.read() as session:
        uid = session.scalars(select(ScaleSet.uid).where(ScaleSet.name == NAME)).one()
    return f"{uid}/{instance_id}"


def test_a_model_version_pins_its_extension_versions_and_keeps_them_until_asked(fleet: Fleet) -> None:
    body = with_script(rolling_body(2, version="1.0.0"))
    body["properties"]["upgradePolicy"] = {"mode": "Automatic"}
    fleet.create(body)
    assert models(fleet) == {1: {"hello": "2.1.0"}}
    assert set(running_versions(fleet).values()) == {"2.1.0"}

    publish_custom_script(fleet, "2.1.1")
    publish_custom_script(fleet, "2.2.0")
    publish_custom_script(fleet, "3.0.0")
    # A model change elsewhere (a new image) keeps the pin of an unchanged extension: publishing newer
    # handler versions does not move it.
    fleet.publish("1.1.0")
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["version"] = "1.1.0"
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, body)
    fleet.run()
    assert models(fleet)[2] == {"hello": "2.1.0"}
    assert set(running_versions(fleet).values()) == {"2.1.0"}

    # extensionRollingUpgrade resolves afresh: the newest minor of the same major, never 3.0.0.
    fleet.container.upgrades.start_extension_upgrade(SUB, GROUP, NAME)
    fleet.run()
    assert models(fleet)[3] == {"hello": "2.2.0"}
    assert set(running_versions(fleet).values()) == {"2.2.0"}
    assert fleet.latest()["properties"]["runningStatus"]["code"] == "Completed"

    # Without autoUpgradeMinorVersion a changed extension resolves within its own major.minor.
    with_script(body, autoUpgradeMinorVersion=False, settings={"commandToExecute": "echo again"})
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, body)
    fleet.run()
    assert models(fleet)[4] == {"hello": "2.1.1"}
    assert set(running_versions(fleet).values()) == {"2.1.1"}  # a downgrade, applied in place


def test_each_failed_member_gets_its_previous_version_back_and_the_run_goes_on(fleet: Fleet) -> None:
    # Batches of one; the third member's new version fails its enable.
    fleet.create(with_script(rolling_body(5, version="1.0.0", maxBatchInstancePercent=20)))
    publish_custom_script(fleet, "2.2.0")
    bad = instance_key(fleet, 2)
    # Faults strike at boot: register it, then give the instance a boot that draws it.
    fleet.sim.add_fault(Fault("extension_failure", extension="hello", version="2.2.0", keys={bad}))
    fleet.container.scalesets.vm_action(SUB, GROUP, NAME, "2", "restart")
    fleet.run()
    fleet.clock.advance(30)
    disks_before = {i.instance_id: i.os_disk_generation for i in fleet.instances()}

    run_id = start_platform_extension_run(fleet, "2.2.0", maxUnhealthyUpgradedInstancePercent=50)
    fleet.run()

    latest = fleet.latest()["properties"]
    assert latest["runningStatus"]["code"] == "Completed"
    states = {m.instance_id: m.state for m in fleet.members() if m.upgrade_id == run_id}
    assert states == {0: "succeeded", 1: "succeeded", 2: "rolled_back", 3: "succeeded", 4: "succeeded"}
    assert fleet.batches() == [[0], [1], [2], [3], [4]]
    assert running_versions(fleet) == {0: "2.2.0", 1: "2.2.0", 2: "2.1.0", 3: "2.2.0", 4: "2.2.0"}
    instances = {i.instance_id: i for i in fleet.instances()}
    assert instances[2].model_version == 1 and instances[3].model_version == 2
    # An extension restore is an extensions update: no instance got a new OS disk.
    assert {i.instance_id: i.os_disk_generation for i in fleet.instances()} == disks_before
    with fleet.container.db.read() as session:
        actions = [
            t.action
            for t in session.scalars(
                select(Task).where(Task.instance_row_id == instances[2].id).order_by(Task.id)
            )
        ]
    assert actions[-2:] == ["extensions", "extensions"]  # the upgrade, then its restore
    assert latest["progress"]["failedInstanceCount"] == 1
    assert latest["progress"]["successfulInstanceCount"] == 4


def test_a_breach_rolls_the_failed_members_back_and_faults(fleet: Fleet) -> None:
    fleet.create(with_script(rolling_body(4, version="1.0.0")))
    publish_custom_script(fleet, "2.2.0")
    bad = instance_key(fleet, 0)
    fleet.sim.add_fault(Fault("extension_failure", extension="hello", version="2.2.0", keys={bad}))
    fleet.container.scalesets.vm_action(SUB, GROUP, NAME, "0", "restart")
    fleet.run()
    fleet.clock.advance(30)

    run_id = start_platform_extension_run(fleet, "2.2.0")
    fleet.run()

    latest = fleet.latest()["properties"]
    assert latest["runningStatus"]["code"] == "Faulted"
    assert latest["error"]["code"] == "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
    states = {m.instance_id: m.state for m in fleet.members() if m.upgrade_id == run_id}
    assert states[0] == "rolled_back"
    assert len(states) == 1  # one update domain per batch: the run stopped after its first
    assert running_versions(fleet) == {0: "2.1.0", 1: "2.1.0", 2: "2.1.0", 3: "2.1.0"}
    assert {i.model_version for i in fleet.instances()} == {1}


def test_a_settings_change_never_takes_an_upgraded_extension_backwards(fleet: Fleet) -> None:
    """Without autoUpgradeMinorVersion "2.1" resolves to 2.1.x; once the automatic upgrade moved the
    extension to 2.2.0, a change of its settings alone keeps 2.2.0 (no downgrade, then upgrade again)."""
    body = with_script(rolling_body(2, version="1.0.0"), autoUpgradeMinorVersion=False)
    fleet.create(body)
    publish_custom_script(fleet, "2.2.0")
    start_platform_extension_run(fleet, "2.2.0")
    fleet.run()
    assert set(running_versions(fleet).values()) == {"2.2.0"}

    with_script(body, autoUpgradeMinorVersion=False, settings={"commandToExecute": "echo changed"})
    fleet.container.scalesets.put_set(SUB, GROUP, NAME, body)
    fleet.run()

    newest = max(models(fleet))
    assert models(fleet)[newest] == {"hello": "2.2.0"}
    assert set(running_versions(fleet).values()) == {"2.2.0"}
