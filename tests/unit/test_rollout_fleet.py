"""Availability first across regions, pairs, phases and zones (M-21, issue 5 §4–§5), on the simulated fleet
and virtual time.

A fleet spread over the default phases' first regions: West Central US (the canary, phase 1), East US 2
(the pilot, phase 2), East US (phase 3) and West US (phase 4, East US's pair). East US holds zoned sets
(3 zones), a regional set, three VMs of one availability set and two single VMs. A new image version is
published in every region at once; the engine is driven pass by pass (`tests/fleet.py`), and after every
pass the instances platform runs have in flight (members `upgrading` or `rolling_back`) are recorded.
Since a batch starts and is judged in different passes, every moment an instance is in flight shows in
some record.

What is checked on that timeline and on the runs' own start and end times: phases strictly in order,
paired regions never in flight together, one zone of a region at a time across sets and VMs, an
availability set one update domain at a time, never every single VM of a subscription at once; and that
everything ends on the new version. A boot failure of the new version in the canary halts the rollout:
no later phase ever starts, even after half an hour of sweeps a minute apart.

The platform sweep is switched off in the ordering test (`platform_sweep_every` of a day): each next
phase, VM wave and held-back set must be started by the end of the run before it (`held_back`), not found
by the sweep.
"""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from scaleset.api.app import create_app
from scaleset.bootstrap import Settings, build, publish_builtin_extensions
from scaleset.catalog.service import ImageCoordinates
from scaleset.domain.regions import find_region
from scaleset.domain.rollout import DEFAULT_PHASES, paired, zone_of
from scaleset.providers.sim import Fault, SimProvider
from scaleset.services.availability_sets import AvailabilitySetService
from scaleset.services.rollouts import RolloutSubject
from scaleset.services.secrets import SecretBox
from scaleset.services.vms import VmService
from scaleset.store.tables import (
    Instance,
    RollingUpgrade,
    ScaleSet,
    UpgradeInstance,
    VirtualMachine,
)
from tests.fakes import FakeClock
from tests.fleet import BOOT_SECONDS, GROUP, LOAD_BALANCER, MANIFEST, PROBE_ID, SUB, Fleet
from tests.support import scale_set_body, vm_body

Json = dict[str, Any]
REGIONS = ("westcentralus", "eastus2", "eastus", "westus")
THREE = ["1", "2", "3"]
# name, region, capacity, zones
SETS = (
    ("canary", "westcentralus", 2, None),
    ("pilot", "eastus2", 3, THREE),
    ("web", "eastus", 6, THREE),
    ("api", "eastus", 3, THREE),
    ("flat", "eastus", 2, None),
    ("west", "westus", 2, None),
)
AVAILABILITY_SET = "as"
SET_VMS = ("as0", "as1", "as2")
SINGLE_VMS = ("solo0", "solo1")
IMAGE = RolloutSubject("image", "scaleset:webapp:stable", "2.0.0")


def set_body(region: str, capacity: int, zones: list[str] | None) -> Json:
    policy = {"mode": "Rolling", "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True}}
    body = scale_set_body(capacity, version="latest", zones=zones, upgradePolicy=policy)
    body["location"] = region
    body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    return body


def publish_everywhere(fleet: Fleet, version: str, unsupported_in: tuple[str, ...] = ()) -> None:
    """Publish scaleset:webapp:stable:<version> in every region of the test, in the order of REGIONS
    reversed (the last phase first: the order of publishing must not be the order of the rollout);
    marked as not supporting automatic OS upgrade in the regions of `unsupported_in`."""
    for supported in (True, False):
        image_dir = fleet.root / f"image-{version}-{supported}"
        image_dir.mkdir()
        manifest = {**MANIFEST, "osVersion": version, "automaticOSUpgradeSupported": supported}
        (image_dir / "scaleset-image.json").write_text(json.dumps(manifest))
        (image_dir / "app.py").write_text("print('hello')\n")
    for region in reversed(REGIONS):
        image_dir = fleet.root / f"image-{version}-{region not in unsupported_in}"
        fleet.container.catalog.publish(
            ImageCoordinates(region, "scaleset", "webapp", "stable", version), image_dir
        )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image 1.0.0 in every region, the built-in extensions, the group, the load balancer."""
    root = tmp_path_factory.mktemp("rollout-prepared")
    clock = FakeClock()
    container = build(
        Settings(data_dir=root / "data", workers=4, observe_every=3600),
        clock=clock,
        provider=SimProvider(clock),
    )
    container.db.migrate()
    try:
        fleet = Fleet(container, SimProvider(clock), clock, root)
        publish_everywhere(fleet, "1.0.0")
        publish_builtin_extensions(container.extensions)
        container.scalesets.put_group(SUB, GROUP, {"location": "eastus"})
        container.loadbalancers.put(SUB, GROUP, "lb", LOAD_BALANCER)
    finally:
        container.close()
    return root


def make_fleet(prepared: Path, tmp_path: Path, sweep_every: float) -> Iterator[Fleet]:
    shutil.copytree(prepared / "data", tmp_path / "data")
    clock = FakeClock()
    sim = SimProvider(clock, boot_seconds=BOOT_SECONDS)
    settings = Settings(
        data_dir=tmp_path / "data", workers=4, observe_every=3600, platform_sweep_every=sweep_every
    )
    container = build(settings, clock=clock, provider=sim)
    container.db.migrate()
    try:
        fleet = Fleet(container, sim, clock, tmp_path)
        build_world(fleet)
        yield fleet
    finally:
        container.close()


@pytest.fixture
def fleet(prepared: Path, tmp_path: Path) -> Iterator[Fleet]:
    """The fleet with the platform sweep off: only the end of a run can start the next ones."""
    yield from make_fleet(prepared, tmp_path, sweep_every=86400.0)


@pytest.fixture
def swept_fleet(prepared: Path, tmp_path: Path) -> Iterator[Fleet]:
    """The fleet with the platform sweep every minute: it keeps asking, and must keep being refused."""
    yield from make_fleet(prepared, tmp_path, sweep_every=60.0)


def build_world(fleet: Fleet) -> None:
    c = fleet.container
    for name, region, capacity, zones in SETS:
        c.scalesets.put_set(SUB, GROUP, name, set_body(region, capacity, zones))
    AvailabilitySetService(c.db, c.clock).put(
        SUB,
        GROUP,
        AVAILABILITY_SET,
        {"location": "eastus", "sku": {"name": "Aligned"}, "properties": {"platformUpdateDomainCount": 3}},
    )
    vms = VmService(
        c.db,
        c.clock,
        c.catalog,
        c.extensions,
        SecretBox.in_directory(c.settings.data_dir),
        c.scalesets,
        c.executor.wake,
    )
    for name in SET_VMS:
        vms.put(SUB, GROUP, name, vm_body(name, availability_set_id(AVAILABILITY_SET)))
    for name in SINGLE_VMS:
        vms.put(SUB, GROUP, name, vm_body(name))
    fleet.run()
    fleet.clock.advance(BOOT_SECONDS)
    # A VM is not offered automatic OS upgrades through its own API (Azure VMs have none); its hidden set
    # is opted in directly, standing for a VM a platform rollout reaches (the extension upgrade does so).
    with c.db.write() as session:
        for vm in session.scalars(select(VirtualMachine)):
            scale_set = session.get(ScaleSet, vm.set_id)
            assert scale_set is not None
            document = copy.deepcopy(scale_set.document)
            document["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"] = {
                "enableAutomaticOSUpgrade": True
            }
            scale_set.document = document


# ------------------------------------------------------------------------------------------ timeline
@dataclass(frozen=True)
class InFlight:
    """One instance a platform run has in flight at one recorded moment."""

    run_id: str
    set_name: str  # the set's name, or the VM's
    region: str
    zone: str  # zone_of: "regional" for none
    availability_set: int | None
    update_domain: int
    single_vm: bool


def in_flight(fleet: Fleet) -> list[InFlight]:
    with fleet.container.db.read() as session:
        rows = session.execute(
            select(
                RollingUpgrade.id,
                ScaleSet.name,
                ScaleSet.location,
                Instance.zone,
                VirtualMachine.name,
                VirtualMachine.availability_set_id,
                VirtualMachine.update_domain,
            )
            .select_from(UpgradeInstance)
            .join(RollingUpgrade, RollingUpgrade.id == UpgradeInstance.upgrade_id)
            .join(ScaleSet, ScaleSet.id == RollingUpgrade.set_id)
            .join(Instance, Instance.id == UpgradeInstance.instance_row_id)
            .outerjoin(VirtualMachine, VirtualMachine.set_id == ScaleSet.id)
            .where(
                RollingUpgrade.started_by == "Platform",
                UpgradeInstance.state.in_(("upgrading", "rolling_back")),
            )
        ).all()
    return [
        InFlight(
            run_id,
            vm_name or set_name,
            region,
            zone_of(zone),
            availability_set,
            update_domain or 0,
            vm_name is not None and availability_set is None,
        )
        for run_id, set_name, region, zone, vm_name, availability_set, update_domain in rows
    ]


def drive(fleet: Fleet, max_passes: int = 20000) -> list[list[InFlight]]:
    """Run the fleet until every run ended, recording what is in flight before every pass."""
    timeline: list[list[InFlight]] = []

    def record() -> bool:
        timeline.append(in_flight(fleet))
        return False

    fleet.run(until=record, max_passes=max_passes)
    timeline.append(in_flight(fleet))
    return timeline


def platform_runs(fleet: Fleet) -> list[tuple[RollingUpgrade, str, str]]:
    """Every platform run, with its set's (or VM's) name and region."""
    with fleet.container.db.read() as session:
        rows = session.execute(
            select(RollingUpgrade, ScaleSet.name, ScaleSet.location, VirtualMachine.name)
            .join(ScaleSet, ScaleSet.id == RollingUpgrade.set_id)
            .outerjoin(VirtualMachine, VirtualMachine.set_id == ScaleSet.id)
            .where(RollingUpgrade.started_by == "Platform")
            .order_by(RollingUpgrade.start_time)
        ).all()
        return [(run, vm_name or set_name, region) for run, set_name, region, vm_name in rows]


def all_image_versions(fleet: Fleet) -> dict[str, set[str]]:
    with fleet.container.db.read() as session:
        rows = session.execute(
            select(ScaleSet.name, VirtualMachine.name, Instance.image_version)
            .join(Instance, Instance.set_id == ScaleSet.id)
            .outerjoin(VirtualMachine, VirtualMachine.set_id == ScaleSet.id)
        ).all()
    found: dict[str, set[str]] = {}
    for set_name, vm_name, version in rows:
        found.setdefault(vm_name or set_name, set()).add(version)
    return found


def vm_domains(fleet: Fleet) -> dict[str, tuple[int | None, int]]:
    with fleet.container.db.read() as session:
        return {
            vm.name: (vm.availability_set_id, vm.update_domain)
            for vm in session.scalars(select(VirtualMachine))
        }


# --------------------------------------------------------------------------------------------- tests
def test_the_fleet_spans_the_phases_pairs_and_zones_it_claims() -> None:
    """The world below is what the rules are tested on: four phases in order, a pair, zoned regions."""
    phases = [DEFAULT_PHASES.phase_of(region) for region in REGIONS]
    assert phases == sorted(phases) and len(set(phases)) == 4
    assert paired("eastus", "westus")
    assert all(find_region(r) is not None for r in REGIONS)
    assert find_region("eastus").zones == tuple(THREE)  # type: ignore[union-attr]


def test_a_new_version_rolls_out_phase_by_phase_zone_by_zone_and_domain_by_domain(fleet: Fleet) -> None:
    """M-21 end to end on the simulated fleet (issue 5 §4, §5)."""
    domains = vm_domains(fleet)
    assert sorted(ud for name, (av, ud) in domains.items() if name in SET_VMS) == [0, 1, 2]

    publish_everywhere(fleet, "2.0.0")
    timeline = drive(fleet)

    runs = platform_runs(fleet)
    names = {name for _, name, _ in runs}
    assert names == {s[0] for s in SETS} | set(SET_VMS) | set(SINGLE_VMS)
    assert all(run.status == "Completed" and run.target_image_version == "2.0.0" for run, _, _ in runs)
    assert all(versions == {"2.0.0"} for versions in all_image_versions(fleet).values())

    # Phases strictly in order: no run of a later phase starts before every run of an earlier one ended.
    for earlier, _, earlier_region in runs:
        for later, _, later_region in runs:
            if DEFAULT_PHASES.phase_of(earlier_region) < DEFAULT_PHASES.phase_of(later_region):
                assert earlier.end_time is not None and later.start_time >= earlier.end_time
    # Paired regions never in flight together (they are in different phases, and the runs never overlap).
    for moment in timeline:
        regions = {f.region for f in moment}
        assert not any(paired(a, b) for a in regions for b in regions if a < b), moment
        assert len({DEFAULT_PHASES.phase_of(r) for r in regions}) <= 1, moment

    # One zone of a region at a time, across sets and VMs; but several runs of a region do go together.
    together = 0
    for moment in timeline:
        for region in REGIONS:
            here = [f for f in moment if f.region == region]
            assert len({f.zone for f in here}) <= 1, here
            together = max(together, len({f.run_id for f in here}))
    assert together >= 2, "the zone rule should not serialise every run of a region"

    # Availability-set VMs: one update domain at a time, each domain done before the next starts.
    by_name = {name: run for run, name, _ in runs}
    ordered = sorted(SET_VMS, key=lambda name: domains[name][1])
    for first, second in itertools.pairwise(ordered):
        assert by_name[second].start_time >= by_name[first].end_time  # type: ignore[operator]
    for moment in timeline:
        assert len({f.update_domain for f in moment if f.availability_set is not None}) <= 1, moment
    # Single VMs: never every one of the subscription at once.
    for moment in timeline:
        assert len({f.set_name for f in moment if f.single_vm}) < len(SINGLE_VMS), moment
    # The VMs' waves come after one another: each VM starts after the one before it ended.
    waves = [*ordered, *sorted(SINGLE_VMS)]
    for first, second in itertools.pairwise(waves):
        assert by_name[second].start_time >= by_name[first].end_time  # type: ignore[operator]

    (view,) = fleet.container.rollouts.list_rollouts()
    assert (view.subject, view.state) == (IMAGE, "succeeded")
    assert [[t.name for t in p.targets if t.state == "succeeded"] for p in view.phases] == [
        ["canary"],
        ["pilot"],
        sorted(
            ["web", "api", "flat", *SET_VMS, *SINGLE_VMS], key=[t.name for t in view.phases[2].targets].index
        ),
        ["west"],
    ]

    print(f"\nrollout: {len(runs)} platform runs, {len(timeline)} passes, virtual {fleet.clock.now()}")


def test_a_failure_in_the_canary_halts_every_later_phase(swept_fleet: Fleet) -> None:
    """M-21: the next phase starts only if the previous one upgraded successfully. The canary's new
    instances fail to boot: its run rolls back, and no other set or VM ever starts towards 2.0.0, even
    with the sweep asking every minute for half an hour."""
    fleet = swept_fleet
    canary_keys = {f"{s.uid}/{i.instance_id}" for s, i in _set_instances(fleet, "canary")}
    fleet.sim.add_fault(Fault("boot_failure", image="2.0.0", keys=canary_keys))

    publish_everywhere(fleet, "2.0.0")
    drive(fleet)
    started = time.perf_counter()
    for _ in range(30):  # half an hour of sweeps, a minute apart
        fleet.clock.advance(60)
        fleet.container.platform.reconcile()
        fleet.tick()
    spent = time.perf_counter() - started
    print(f"\n30 sweeps and engine passes, 10 targets refused each time: {spent:.2f} s")
    with fleet.container.db.read() as session:
        west = session.scalars(select(ScaleSet).where(ScaleSet.name == "west")).one()
        started = time.perf_counter()
        reasons = {fleet.container.rollouts.may_start(session, west, IMAGE) for _ in range(50)}
        spent = time.perf_counter() - started
    assert reasons == {f"{IMAGE.key} 2.0.0: phase 1 failed: the rollout of this version is halted"}
    print(f"may_start with 11 targets: {spent / 50 * 1000:.1f} ms per call")

    runs = platform_runs(fleet)
    assert [(name, run.status) for run, name, _ in runs] == [("canary", "Faulted")]
    versions = all_image_versions(fleet)
    assert versions["canary"] == {"1.0.0"}  # rolled back
    assert all(v == {"1.0.0"} for v in versions.values())
    (view,) = fleet.container.rollouts.list_rollouts()
    assert view.subject == IMAGE and view.state == "halted"
    assert [p.state for p in view.phases] == ["halted", "halted", "halted", "halted"]
    assert [len(p.targets) for p in view.phases] == [1, 1, 8, 1]

    # The same over the wire, for any token: every later target still waiting, none started.
    _, reader = fleet.container.tokens.create("reader", "rollouts")
    with TestClient(create_app(fleet.container)) as client:
        answer = client.get(
            "/providers/Scaleset.Platform/rollouts",
            params={"kind": "image", "version": "2.0.0"},
            headers={"Authorization": f"Bearer {reader}"},
        )
    assert answer.status_code == 200, answer.text
    (rollout,) = answer.json()["value"]
    assert (rollout["key"], rollout["state"], rollout["targetCount"]) == (IMAGE.key, "halted", 11)
    assert rollout["counts"] == {"waiting": 10, "running": 0, "succeeded": 0, "failed": 1, "excluded": 0}
    canary = rollout["phases"][0]
    assert (canary["regions"], canary["counts"]["failed"]) == (["westcentralus"], 1)
    assert canary["targets"][0]["id"].endswith("/virtualMachineScaleSets/canary")
    vm_ids = [
        t["id"] for t in rollout["phases"][2]["targets"] if t["type"] == "Microsoft.Compute/virtualMachines"
    ]
    assert sorted(i.rsplit("/", 1)[1] for i in vm_ids) == sorted([*SET_VMS, *SINGLE_VMS])


def _set_instances(fleet: Fleet, name: str) -> list[tuple[ScaleSet, Instance]]:
    with fleet.container.db.read() as session:
        rows = session.execute(
            select(ScaleSet, Instance)
            .join(Instance, Instance.set_id == ScaleSet.id)
            .where(ScaleSet.name == name)
        )
        return [(scale_set, instance) for scale_set, instance in rows]


def test_a_cross_zone_policy_cannot_mix_zones_in_a_platform_run(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A platform service that hands a run the set's own policy with `enableCrossZoneUpgrade` (and 100 %
    batches) stands for any future caller: the gate corrects the run's policy before its first batch,
    and every batch of every platform run stays inside one zone."""
    from scaleset.services import platform

    def cross_zone(upgrade_policy: Json) -> tuple[Json, bool]:
        policy, rollback = real(upgrade_policy)
        return {**policy, "enableCrossZoneUpgrade": True, "maxBatchInstancePercent": 100}, rollback

    real = platform.platform_run_policy
    monkeypatch.setattr(platform, "platform_run_policy", cross_zone)

    publish_everywhere(fleet, "2.0.0")
    timeline = drive(fleet)

    runs = platform_runs(fleet)
    assert len(runs) == len(SETS) + len(SET_VMS) + len(SINGLE_VMS)
    assert all(run.status == "Completed" for run, _, _ in runs)
    assert all(run.policy["enableCrossZoneUpgrade"] is False for run, _, _ in runs)
    with fleet.container.db.read() as session:
        zones_per_batch: dict[tuple[str, int], set[str | None]] = {}
        for upgrade_id, batch, zone in session.execute(
            select(UpgradeInstance.upgrade_id, UpgradeInstance.batch, Instance.zone).join(
                Instance, Instance.id == UpgradeInstance.instance_row_id
            )
        ):
            zones_per_batch.setdefault((upgrade_id, batch), set()).add(zone)
    assert all(len(zones) == 1 for zones in zones_per_batch.values()), zones_per_batch
    for moment in timeline:
        for region in REGIONS:
            assert len({f.zone for f in moment if f.region == region}) <= 1


def test_a_region_the_version_is_never_offered_in_does_not_hold_the_rollout(swept_fleet: Fleet) -> None:
    """The canary's copy of 2.0.0 does not support automatic OS upgrade: the canary set is excluded (it
    will never run), and the rollout goes on from phase 2 instead of waiting for ever. The canary's copy
    is published last, so phase 2 was refused while it was still to come; no run ends to wake it: the
    platform's sweep (a minute) starts it."""
    fleet = swept_fleet
    publish_everywhere(fleet, "2.0.0", unsupported_in=("westcentralus",))
    assert platform_runs(fleet) == []  # phase 2 was refused while the canary's copy was still to come
    fleet.clock.advance(60)
    fleet.container.platform.reconcile()  # the sweep, as the executor runs it every minute
    drive(fleet)

    runs = platform_runs(fleet)
    assert "canary" not in {name for _, name, _ in runs}
    assert len(runs) == len(SETS) - 1 + len(SET_VMS) + len(SINGLE_VMS)
    assert all(run.status == "Completed" for run, _, _ in runs)
    versions = all_image_versions(fleet)
    assert versions.pop("canary") == {"1.0.0"}
    assert all(v == {"2.0.0"} for v in versions.values())
    (view,) = fleet.container.rollouts.list_rollouts()
    assert view.state == "succeeded"
    assert [t.state for t in view.phases[0].targets] == ["excluded"]


def availability_set_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/availabilitySets/{name}"


def test_a_target_that_can_never_get_the_version_does_not_hold_the_rollout_back(fleet: Fleet) -> None:
    """An extension rollout of 2.2.0: the canary's set runs the same extension on major 1, which is never
    upgraded across majors (M-18). It is excluded from the rollout rather than waited for, so East US,
    two phases later, gets its platform run at once."""
    from tests.unit.test_extension_pins import publish_custom_script, with_script

    publish_custom_script(fleet, "1.0.0")
    for name, region, handler in (("xcanary", "westcentralus", "1.0"), ("xweb", "eastus", "2.1")):
        body = with_script(set_body(region, 1, None), enableAutomaticUpgrade=True)
        body["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"][0]["properties"][
            "typeHandlerVersion"
        ] = handler
        fleet.container.scalesets.put_set(SUB, GROUP, name, body)
    fleet.run()
    fleet.clock.advance(BOOT_SECONDS)

    publish_custom_script(fleet, "2.2.0")
    fleet.run()

    with fleet.container.db.read() as session:
        runs = {
            session.get(ScaleSet, run.set_id).name: (run.kind, run.status, run.extension_version)  # type: ignore[union-attr]
            for run in session.scalars(select(RollingUpgrade))
        }
    assert {k: v for k, v in runs.items() if k.startswith("x")} == {
        "xweb": ("extension", "Completed", "2.2.0")
    }
    subject = RolloutSubject("extension", "microsoft.azure.extensions.customscript", "2.2.0")
    with fleet.container.db.read() as session:
        states = {t.name: t.state for t in fleet.container.rollouts.targets(session, subject)}
    states = {k: v for k, v in states.items() if k.startswith("x")}
    assert states == {"xcanary": "excluded", "xweb": "succeeded"}
