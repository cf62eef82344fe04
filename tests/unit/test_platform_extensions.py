"""Automatic extension upgrades started by the platform, on the simulated fleet and virtual time
(M-18, M-19, M-20, M-22, M-23, M-24, M-26; azure-api.md §4.4).

Publishing goes through the extension catalog, so the platform hears of it as in the server; the engine is
driven by hand (`tests/fleet.py`). What is checked is what a user sees: which sets get a run, its batches,
the handler version each instance ends on, that a failed version is retried once after the retry interval
and then blocked, and that nothing crosses a major version.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from scaleset.domain.errors import ArmError
from scaleset.guest.builtin import builtin_packages
from scaleset.providers.sim import Fault
from scaleset.services.extension_failures import DEFAULT_RETRY_SECONDS, GATE_RETRY
from scaleset.services.secrets import SecretBox
from scaleset.services.vms import VmService
from scaleset.store.tables import ExtensionUpgradeFailure, RollingUpgrade, ScaleSet, ScaleSetModel
from tests.fleet import GROUP, NAME, SUB, Fleet, fleet_on_copy, prepare_data, rolling_body
from tests.support import vm_body

Json = dict[str, Any]
SCRIPT = ("Microsoft.Azure.Extensions", "CustomScript")  # built-in 2.1.0
PROBE = ("Contoso.Tools", "Probe")
RETRY = timedelta(seconds=DEFAULT_RETRY_SECONDS)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = prepare_data(tmp_path_factory.mktemp("extension-platform-prepared"))
    return root


@pytest.fixture
def fleet(tmp_path: Path, prepared: Path) -> Iterator[Fleet]:
    yield from fleet_on_copy(prepared, tmp_path)


# ------------------------------------------------------------------------------------------- helpers
def publish(fleet: Fleet, version: str, handler: tuple[str, str] = SCRIPT) -> None:
    """Another version of a handler: the built-in CustomScript package (the sim runs no handler code)."""
    package = next(p for p in builtin_packages() if p.type == "CustomScript")
    artifact = package.assemble(fleet.root / f"{handler[1]}-{version}")
    fleet.container.extensions.publish(handler[0], handler[1], version, artifact)


def extension(name: str, handler: tuple[str, str], version: str, **properties: Any) -> Json:
    return {
        "name": name,
        "properties": {
            "publisher": handler[0],
            "type": handler[1],
            "typeHandlerVersion": version,
            "enableAutomaticUpgrade": True,
            "settings": {"commandToExecute": f"echo {name}"},
            **properties,
        },
    }


def auto_body(capacity: int, *extensions: Json, mode: str = "Rolling", **policy: Any) -> Json:
    body = rolling_body(capacity, version="1.0.0", **policy)
    body["properties"]["upgradePolicy"]["mode"] = mode
    body["properties"]["virtualMachineProfile"]["extensionProfile"] = {
        "extensions": list(extensions) or [extension("hello", SCRIPT, "2.1")]
    }
    return body


def runs(fleet: Fleet, set_name: str = NAME) -> list[RollingUpgrade]:
    with fleet.container.db.read() as session:
        set_id = session.scalar(select(ScaleSet.id).where(ScaleSet.name == set_name))
        return list(
            session.scalars(
                select(RollingUpgrade)
                .where(RollingUpgrade.set_id == set_id)
                .order_by(RollingUpgrade.start_time, RollingUpgrade.batch_number)
            )
        )


def platform_runs(fleet: Fleet, set_name: str = NAME) -> list[tuple[str | None, str | None, str]]:
    """(extension name, version, status) of each platform extension run, oldest first."""
    return [
        (r.extension_name, r.extension_version, r.status)
        for r in runs(fleet, set_name)
        if r.started_by == "Platform" and r.kind == "extension"
    ]


def versions(fleet: Fleet, name: str = "hello") -> dict[int, str]:
    """Each instance's version of extension `name`, as its last goal state resolved it."""
    return {i.instance_id: (i.extension_versions or {}).get(name, "") for i in fleet.instances()}


def newest_pins(fleet: Fleet, set_name: str = NAME) -> dict[str, str]:
    with fleet.container.db.read() as session:
        scale_set = session.scalars(select(ScaleSet).where(ScaleSet.name == set_name)).one()
        model = session.get(ScaleSetModel, (scale_set.id, scale_set.model_version))
        assert model is not None
        return dict(model.extension_versions or {})


def failures(fleet: Fleet) -> list[tuple[str, str, bool]]:
    """(version, kind, blocked) of each failure in force on the set."""
    return [
        (row.version, row.kind, row.retry_at is None)
        for row in fleet.container.extension_platform.list_failures(SUB, GROUP, NAME)
        if row.cleared_at is None
    ]


def bad_release(fleet: Fleet, version: str, name: str = "hello") -> None:
    """`version` of extension `name` fails its enable on every instance booted from now on."""
    fleet.sim.add_fault(Fault("extension_failure", extension=name, version=version))


# ------------------------------------------------------------------------------- publish starts runs
def test_a_new_minor_version_reaches_every_instance_and_a_major_never_does(fleet: Fleet) -> None:
    """M-18, M-22: publishing 2.2.0 starts a Platform extension run at once, batches from the set's own
    rollingUpgradePolicy whatever the mode (Automatic here), and every instance ends on 2.2.0. 3.0.0 is a
    new major: never applied automatically."""
    fleet.create(auto_body(10, mode="Automatic", maxBatchInstancePercent=10))
    assert set(versions(fleet).values()) == {"2.1.0"}
    published_at = fleet.clock.now()

    publish(fleet, "2.2.0")

    (run,) = runs(fleet)
    assert (run.kind, run.started_by, run.extension_key, run.extension_name, run.extension_version) == (
        "extension",
        "Platform",
        "microsoft.azure.extensions.customscript",
        "hello",
        "2.2.0",
    )
    assert run.start_time.replace(tzinfo=published_at.tzinfo) == published_at
    assert run.roll_back_each_failure and run.rollback_on_breach
    assert run.policy["maxBatchInstancePercent"] == 10
    assert run.policy["rollbackFailedInstancesOnPolicyBreach"] is True
    fleet.run()
    assert platform_runs(fleet) == [("hello", "2.2.0", "Completed")]
    assert set(versions(fleet).values()) == {"2.2.0"}
    assert [len(b) for b in fleet.batches()] == [1] * 10  # 10 % of 10; Azure's 20 % would be 2
    assert newest_pins(fleet) == {"hello": "2.2.0"}

    publish(fleet, "3.0.0")
    assert fleet.container.extension_platform.sweep() == []
    fleet.run()
    assert set(versions(fleet).values()) == {"2.2.0"}
    assert len(runs(fleet)) == 1


def test_only_extensions_that_opt_in_are_upgraded(fleet: Fleet) -> None:
    """M-18: each extension opts in on its own; `autoUpgradeMinorVersion` alone does not upgrade running
    instances."""
    publish(fleet, "1.0.0", PROBE)
    fleet.create(
        auto_body(
            2,
            extension("hello", SCRIPT, "2.1", enableAutomaticUpgrade=False),
            extension("probe", PROBE, "1.0"),
        )
    )
    publish(fleet, "2.2.0")
    assert runs(fleet) == []

    publish(fleet, "1.1.0", PROBE)
    fleet.run()

    assert platform_runs(fleet) == [("probe", "1.1.0", "Completed")]
    assert set(versions(fleet, "probe").values()) == {"1.1.0"}
    assert set(versions(fleet, "hello").values()) == {"2.1.0"}


# ---------------------------------------------------------------------- several extensions, failures
def test_two_extensions_go_one_after_the_other_and_a_failure_does_not_stop_the_second(fleet: Fleet) -> None:
    """M-23: each extension gets its own run; the first one's failure (rolled back) does not keep the
    second from its upgrade."""
    publish(fleet, "1.0.0", PROBE)
    bad_release(fleet, "2.2.0")
    fleet.create(auto_body(3, extension("hello", SCRIPT, "2.1"), extension("probe", PROBE, "1.0")))
    publish(fleet, "2.2.0", SCRIPT)  # the hello run starts now...
    publish(fleet, "1.1.0", PROBE)  # ...and the probe one waits for it

    assert platform_runs(fleet) == [("hello", "2.2.0", "RollingForward")]
    fleet.run()

    assert platform_runs(fleet) == [("hello", "2.2.0", "Faulted"), ("probe", "1.1.0", "Completed")]
    assert set(versions(fleet, "hello").values()) == {"2.1.0"}
    assert set(versions(fleet, "probe").values()) == {"1.1.0"}
    assert newest_pins(fleet) == {"hello": "2.1.0", "probe": "1.1.0"}


def test_a_failing_version_is_rolled_back_retried_once_then_blocked(fleet: Fleet) -> None:
    """M-19, M-20: each instance whose new version fails gets the previous one back, and the run goes on
    (here 2 of 5 fail, within maxUnhealthyUpgradedInstancePercent 50). The version is retried after three
    virtual days; failing again there blocks it for good: no sweep offers it again. A newer version is
    offered as usual, and an operator clear lets the blocked one back."""
    fleet.create(auto_body(5, maxUnhealthyUpgradedInstancePercent=50))
    bad = {f"{uid}/{i}" for uid in [set_uid(fleet)] for i in (1, 3)}
    fleet.sim.add_fault(Fault("extension_failure", extension="hello", version="2.2.0", keys=bad))
    restart_all(fleet)

    publish(fleet, "2.2.0")
    fleet.run()

    assert platform_runs(fleet) == [("hello", "2.2.0", "Completed")]
    states = {m.instance_id: m.state for m in fleet.members()}
    assert states == {0: "succeeded", 1: "rolled_back", 2: "succeeded", 3: "rolled_back", 4: "succeeded"}
    assert versions(fleet) == {0: "2.2.0", 1: "2.1.0", 2: "2.2.0", 3: "2.1.0", 4: "2.2.0"}
    assert failures(fleet) == [("2.2.0", "failed", False)]
    # The set's model goes back to 2.1.0, so instances made from now on do not start on 2.2.0.
    assert newest_pins(fleet) == {"hello": "2.1.0"}

    fleet.clock.advance(RETRY.total_seconds() - 3600)
    assert fleet.container.extension_platform.sweep() == []  # not yet
    fleet.clock.advance(3600)
    assert len(fleet.container.extension_platform.sweep()) == 1  # the one retry
    fleet.run()

    assert [v for _, v, _ in platform_runs(fleet)] == ["2.2.0", "2.2.0"]
    assert failures(fleet) == [("2.2.0", "failed", False), ("2.2.0", "failed", True)]
    assert versions(fleet) == {0: "2.2.0", 1: "2.1.0", 2: "2.2.0", 3: "2.1.0", 4: "2.2.0"}
    for _ in range(3):  # blocked: never retried again, however long
        fleet.clock.advance(RETRY.total_seconds())
        assert fleet.container.extension_platform.sweep() == []
    assert newest_pins(fleet) == {"hello": "2.1.0"}

    publish(fleet, "2.3.0")  # newer: offered at once
    fleet.run()
    assert platform_runs(fleet)[-1] == ("hello", "2.3.0", "Completed")
    assert set(versions(fleet).values()) == {"2.3.0"}


def test_an_operator_clear_lets_a_blocked_version_back(fleet: Fleet) -> None:
    fleet.create(auto_body(2))
    bad_release(fleet, "2.2.0")
    restart_all(fleet)
    publish(fleet, "2.2.0")
    fleet.run()
    fleet.clock.advance(RETRY.total_seconds())
    fleet.container.extension_platform.sweep()
    fleet.run()
    assert failures(fleet) == [("2.2.0", "failed", False), ("2.2.0", "failed", True)]
    fleet.sim.clear_faults()
    restart_all(fleet)

    with pytest.raises(ArmError) as refused:
        fleet.container.extension_platform.clear(SUB, GROUP, NAME, versions=["two"])
    assert (refused.value.status, refused.value.target) == (400, "versions[0]")
    assert fleet.container.extension_platform.clear(SUB, GROUP, NAME, extension="other") == []
    cleared = fleet.container.extension_platform.clear(SUB, GROUP, NAME, extension="hello", versions=["2.2"])

    assert [(c.version, c.cleared_at is not None) for c in cleared] == [("2.2.0", True), ("2.2.0", True)]
    assert failures(fleet) == []
    assert platform_runs(fleet)[-1] == ("hello", "2.2.0", "RollingForward")  # started by the clear
    fleet.run()
    assert set(versions(fleet).values()) == {"2.2.0"}


def test_a_run_stopped_at_the_gate_is_tried_again_soon_and_counts_for_nothing(fleet: Fleet) -> None:
    """A set too unhealthy to start (2 of 5 stopped) faults before touching anything: that says nothing
    against the version, so it is tried again after GATE_RETRY, not after days, and never blocks."""
    fleet.create(auto_body(5))
    fleet.container.scalesets.set_action(SUB, GROUP, NAME, "stop", {"instanceIds": ["1", "2"]})
    fleet.run()

    publish(fleet, "2.2.0")
    fleet.run()
    assert platform_runs(fleet) == [("hello", "2.2.0", "Faulted")]
    assert failures(fleet) == [("2.2.0", "gated", False)]
    fleet.container.scalesets.set_action(SUB, GROUP, NAME, "start", {"instanceIds": ["1", "2"]})
    fleet.run()
    fleet.clock.advance(GATE_RETRY.total_seconds())

    assert len(fleet.container.extension_platform.sweep()) == 1
    fleet.run()
    assert platform_runs(fleet)[-1] == ("hello", "2.2.0", "Completed")
    assert set(versions(fleet).values()) == {"2.2.0"}


# ------------------------------------------------------------------------------------- VMs, crashes
def test_a_standalone_vm_is_upgraded_like_a_set(fleet: Fleet) -> None:
    """M-18, M-24: a VM extension PUT with enableAutomaticUpgrade (`az vm extension set
    --enable-auto-upgrade`) reaches the VM's hidden set, and a publish upgrades the VM."""
    c = fleet.container
    vms = VmService(
        c.db,
        c.clock,
        c.catalog,
        c.extensions,
        SecretBox.in_directory(c.settings.data_dir),
        c.scalesets,
        c.executor.wake,
    )
    vms.put(SUB, GROUP, "vm1", vm_body("vm1"))
    fleet.run()
    vms.put_extension(
        SUB, GROUP, "vm1", "hello", {"properties": extension("hello", SCRIPT, "2.1")["properties"]}, False
    )
    fleet.run()
    state = vms.get(SUB, GROUP, "vm1")
    assert state.model["extensionProfile"]["extensions"][0]["properties"]["enableAutomaticUpgrade"] is True
    fleet.clock.advance(30)

    publish(fleet, "2.2.0")
    fleet.run()

    backing = vms.get(SUB, GROUP, "vm1").scale_set
    assert platform_runs(fleet, backing.name) == [("hello", "2.2.0", "Completed")]
    instance = vms.get(SUB, GROUP, "vm1").instance
    assert instance is not None and (instance.extension_versions or {})["hello"] == "2.2.0"
    assert c.extension_platform.list_failures(SUB, GROUP, "vm1", vm=True) == []


def test_the_sweep_finds_what_a_crash_lost(fleet: Fleet) -> None:
    """M-26: a publish whose listener never ran, and a failed run whose end nobody heard, are both found by
    the sweep the engine runs at start."""
    fleet.create(auto_body(3))
    bad_release(fleet, "2.2.0")
    restart_all(fleet)
    listeners = list(fleet.container.extensions.on_publish)
    fleet.container.extensions.on_publish.clear()
    fleet.container.rolling.on_finish.remove(fleet.container.extension_platform.on_run_finished)
    publish(fleet, "2.2.0")
    assert runs(fleet) == []

    assert fleet.container.extension_platform.reconcile() is False  # an engine's first pass sweeps
    assert platform_runs(fleet) == [("hello", "2.2.0", "RollingForward")]
    fleet.run()
    assert failures(fleet) == []  # nobody heard the run end...

    assert fleet.container.extension_platform.sweep() == []
    assert failures(fleet) == [("2.2.0", "failed", False)]  # ...the sweep records it, and does not retry
    assert newest_pins(fleet) == {"hello": "2.1.0"}
    fleet.container.extensions.on_publish.extend(listeners)
    with fleet.container.db.read() as session:
        assert len(session.scalars(select(ExtensionUpgradeFailure)).all()) == 1


# ------------------------------------------------------------------------------------------- support
def set_uid(fleet: Fleet) -> str:
    with fleet.container.db.read() as session:
        return session.scalars(select(ScaleSet.uid).where(ScaleSet.name == NAME)).one()


def restart_all(fleet: Fleet) -> None:
    """Faults strike at boot: give every instance a boot that draws the faults registered so far."""
    fleet.container.scalesets.set_action(SUB, GROUP, NAME, "restart", None)
    fleet.run()
    fleet.clock.advance(30)
