"""The rolling loop keeps what cannot change between steps (the members of earlier batches, the current
batch's rows and task ids, model versions) instead of reading them again every pass. These tests hold it to
the rule that makes that safe: at every pass, the view the planner gets is exactly the one an engine with
nothing kept (a freshly started control plane) would build from the database.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from scaleset.engine.health import HealthPass
from scaleset.engine.rolling import RollingEngine
from scaleset.providers.sim import Fault
from tests.unit import test_rolling as base

# The same fixtures as test_rolling's: a prepared database, copied for each test, and the fleet on it.
prepared = base.prepared
fleet = base.fleet
Fleet = base.Fleet
SUB, GROUP, NAME, rolling_body = base.SUB, base.GROUP, base.NAME, base.rolling_body


def compare_every_view(fleet: Fleet) -> list[str]:
    """Make every observation of the fleet's engine also build the view afresh, and check they agree;
    returns the phases seen."""
    engine = fleet.container.rolling
    phases: list[str] = []
    observe = engine._observe

    def checked(session: Any, run_id: str, health: HealthPass) -> Any:
        observed = observe(session, run_id, health)
        fresh = RollingEngine(
            fleet.container.db,
            fleet.clock,
            fleet.container.health,
            lambda: None,
            fleet.container.scalesets.create_instances,
        )
        again = fresh._observe(session, run_id, health)
        assert (observed is None) == (again is None)
        if observed is not None and again is not None:
            assert observed.view == again.view
            phases.append(observed.view.phase)
        return observed

    engine._observe = checked  # type: ignore[method-assign]
    return phases


def test_kept_rows_give_the_same_view_as_a_fresh_read_through_a_whole_upgrade(fleet: Fleet) -> None:
    fleet.create(rolling_body(10))
    fleet.publish("1.1.0")
    phases = compare_every_view(fleet)
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()
    assert {"ready", "upgrading"} <= set(phases)
    assert fleet.batches() == [[0, 5], [1, 6], [2, 7], [3, 8], [4, 9]]


def test_kept_rows_give_the_same_view_through_a_failed_batch_and_its_rollback(fleet: Fleet) -> None:
    fleet.create(rolling_body(10, rollbackFailedInstancesOnPolicyBreach=True))
    fleet.sim.add_fault(Fault("hang", image="2.0.0", keys=None, rate=0.5))
    fleet.publish("2.0.0")
    phases = compare_every_view(fleet)
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.run()
    assert "upgrading" in phases


def test_kept_rows_give_the_same_view_with_max_surge(fleet: Fleet) -> None:
    fleet.create(rolling_body(5, maxSurge=True))
    fleet.publish("1.1.0")
    phases = compare_every_view(fleet)
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    for _ in range(400):
        if not fleet.tick() and fleet.settled():
            break
        fleet.clock.advance(5)
    assert {"ready", "upgrading"} <= set(phases)
    assert {i.image_version for i in fleet.instances()} == {"1.1.0"}


def test_a_stopped_member_is_seen_unhealthy_at_once(fleet: Fleet) -> None:
    """Instances are read again every pass: a member stopped while its batch waits is not healthy."""
    fleet.create(rolling_body(10))
    fleet.publish("1.1.0")
    phases = compare_every_view(fleet)
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    fleet.tick()
    fleet.tick()
    key = f"{fleet.container.scalesets.get_set(SUB, GROUP, NAME).uid}/0"
    fleet.sim.stop_instance(key)
    fleet.container.executor.observe()
    fleet.run()
    assert "upgrading" in phases


def test_kept_rows_give_the_same_view_through_per_failure_restores(fleet: Fleet) -> None:
    """A run that rolls each failed member back and goes on (automatic extension upgrades, M-19) passes
    through `restoring` between batches; what is kept must still match a fresh read around it."""
    from tests.unit import test_extension_pins as pins

    fleet.create(pins.with_script(rolling_body(5, version="1.0.0", maxBatchInstancePercent=20)))
    pins.publish_custom_script(fleet, "2.2.0")
    bad = pins.instance_key(fleet, 1)
    fleet.sim.add_fault(Fault("extension_failure", extension="hello", version="2.2.0", keys={bad}))
    fleet.container.scalesets.vm_action(SUB, GROUP, NAME, "1", "restart")
    fleet.run()
    fleet.clock.advance(30)
    phases = compare_every_view(fleet)

    pins.start_platform_extension_run(fleet, "2.2.0", maxUnhealthyUpgradedInstancePercent=50)
    fleet.run()

    assert {"ready", "upgrading", "restoring"} <= set(phases)
    assert [m.state for m in fleet.members()] == [
        "succeeded",
        "rolled_back",
        "succeeded",
        "succeeded",
        "succeeded",
    ]


def test_a_change_another_connection_commits_is_seen_by_the_next_pass(fleet: Fleet) -> None:
    """Between two passes in which this process wrote nothing, the loop keeps what it read (`_Seen`). A
    commit from anywhere else (here a plain sqlite3 connection, as another process would make) must still
    reach the next pass: an instance stopped behind the engine's back is unhealthy at once."""
    fleet.create(rolling_body(10))
    fleet.publish("1.1.0")
    phases = compare_every_view(fleet)
    fleet.container.upgrades.start_os_upgrade(SUB, GROUP, NAME)
    engine = fleet.container.rolling
    run_id = engine.active_runs()[0]

    def current_batch() -> dict[int, bool]:
        with fleet.container.db.read() as session:
            observed = engine._observe(session, run_id, fleet.container.health.one_pass())
        assert observed is not None
        view = observed.view
        return {m.instance_id: m.healthy for m in view.members if m.batch == view.batch_number}

    fleet.run(until=lambda: len(fleet.batches()) == 1 and fleet.open_tasks() == 0)
    fleet.clock.advance(base.BOOT_SECONDS + 1)
    fleet.tick()  # the health wait is armed: a write by this process
    assert current_batch() == {0: True, 5: True}
    assert current_batch() == {0: True, 5: True}  # nothing written in between: the kept rows
    database = fleet.container.db.engine.url.database
    assert database is not None
    with sqlite3.connect(database) as other:
        other.execute("UPDATE instances SET power_state = 'stopped' WHERE instance_id = 5")
    other.close()
    assert current_batch() == {0: True, 5: False}
    assert "upgrading" in phases
