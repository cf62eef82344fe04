"""The simulated-fleet harness of the unit tests: services, executor and the rolling loop on a real
database, instances on the simulated fleet (providers/sim.py), time virtual (a 5-minute health wait takes
milliseconds). The container is never started: every test decides when a pass runs (`Fleet.run`).

A test module builds its fixtures from it: one prepared data directory per module (`prepare_data`), copied
for each test (`fleet_on_copy`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from scaleset.bootstrap import Container, Settings, build, publish_builtin_extensions
from scaleset.catalog.service import ImageCoordinates
from scaleset.providers.sim import SimProvider
from scaleset.services.operations import OPEN_TASK_STATES
from scaleset.store.tables import Instance, Operation, RollingUpgrade, Task, UpgradeInstance
from tests.fakes import FakeClock
from tests.support import http_health_probe, scale_set_body

SUB = "00000000-0000-0000-0000-000000000000"
GROUP = "rg"
NAME = "web"
MANIFEST = {"manifestVersion": 1, "osType": "Linux", "entrypoint": ["python3", "app.py"], "ports": [8080]}
PROBE_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Network/loadBalancers/lb/probes/http"
)
LOAD_BALANCER = {"location": "eastus", "properties": {"probes": [http_health_probe("http")]}}
BOOT_SECONDS = 20.0


def rolling_body(capacity: int, version: str = "latest", **policy: Any) -> dict[str, Any]:
    """The body of a Rolling set of `capacity` instances behind the load-balancer probe; `policy` is its
    rollingUpgradePolicy."""
    body = scale_set_body(
        capacity,
        version=version,
        upgradePolicy={"mode": "Rolling", "rollingUpgradePolicy": policy},
    )
    body["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": {"id": PROBE_ID}}
    return body


@dataclass
class Fleet:
    """Services, executor and rolling loop on a real database, instances on the simulated fleet, time
    virtual; the engine is driven by hand, pass by pass."""

    container: Container
    sim: SimProvider
    clock: FakeClock
    root: Path

    # -- driving ------------------------------------------------------------------------------------
    def open_tasks(self) -> int:
        with self.container.db.read() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(Task).where(Task.status.in_(("pending", "running")))
                )
                or 0
            )

    def drain(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            self.container.executor.run_pass()
            if self.open_tasks() == 0:
                return
            assert time.monotonic() < deadline, "tasks still open"
            time.sleep(0.001)

    def tick(self) -> bool:
        """One engine pass: run tasks, judge guests, one rolling step; True while a run is active."""
        self.drain()
        self.container.executor.settle()
        active = self.container.rolling.step_all()
        self.drain()
        return active

    def run(self, *, seconds_per_idle: float = 5.0, max_passes: int = 5000, until: Any = None) -> None:
        """Pass after pass until no run is active (or `until()` holds), advancing virtual time when
        a pass changed nothing."""
        for _ in range(max_passes):
            if until is not None and until():
                return
            before = self.fingerprint()
            active = self.tick()
            if not active and self.settled():
                return
            if self.fingerprint() == before:
                self.clock.advance(seconds_per_idle)
        raise AssertionError("the fleet did not settle")

    def settled(self) -> bool:
        with self.container.db.read() as session:
            return not session.scalar(
                select(func.count()).select_from(Task).where(Task.status.in_(OPEN_TASK_STATES))
            )

    def fingerprint(self) -> str:
        with self.container.db.read() as session:
            runs = [(r.phase, r.batch_number, r.status) for r in session.scalars(select(RollingUpgrade))]
            tasks = [(t.id, t.status) for t in session.scalars(select(Task))]
        return json.dumps([runs, tasks])

    # -- the world --------------------------------------------------------------------------------------
    def publish(self, version: str, *, sku: str = "stable", supported: bool | None = None) -> None:
        """Publish `scaleset:webapp:<sku>:<version>` through the catalog; `supported` sets the image's
        automaticOSUpgradeSupported mark (None: the manifest does not say)."""
        image_dir = self.root / f"image-{sku}-{version}"
        image_dir.mkdir()
        manifest: dict[str, Any] = {**MANIFEST, "osVersion": version}
        if supported is not None:
            manifest["automaticOSUpgradeSupported"] = supported
        (image_dir / "scaleset-image.json").write_text(json.dumps(manifest))
        (image_dir / "app.py").write_text("print('hello')\n")
        self.container.catalog.publish(
            ImageCoordinates("eastus", "scaleset", "webapp", sku, version), image_dir
        )

    def create(self, body: dict[str, Any]) -> None:
        """Create the set and wait until its instances are up (a run started earlier would find them
        booting, hence unhealthy, and stop at the gate)."""
        self.container.scalesets.put_set(SUB, GROUP, NAME, body)
        self.run()
        self.clock.advance(BOOT_SECONDS)

    def instances(self) -> list[Instance]:
        return self.container.scalesets.list_instances(SUB, GROUP, NAME)[1]

    def members(self) -> list[UpgradeInstance]:
        with self.container.db.read() as session:
            return list(
                session.scalars(
                    select(UpgradeInstance).order_by(UpgradeInstance.batch, UpgradeInstance.instance_id)
                )
            )

    def batches(self) -> list[list[int]]:
        found: dict[int, list[int]] = {}
        for member in self.members():
            found.setdefault(member.batch, []).append(member.instance_id)
        return [found[b] for b in sorted(found)]

    def latest(self) -> dict[str, Any]:
        from scaleset.api.views import rolling_upgrade_view

        return rolling_upgrade_view(self.container.upgrades.latest(SUB, GROUP, NAME))

    def operation(self, operation_id: str) -> Operation:
        with self.container.db.read() as session:
            row = session.get(Operation, operation_id)
            assert row is not None
            return row


def make_container(data_dir: Path, sim: SimProvider, clock: FakeClock) -> Container:
    """The control plane's container on `data_dir` and the sim provider, migrated, never started."""
    container = build(Settings(data_dir=data_dir, workers=4, observe_every=3600), clock=clock, provider=sim)
    container.db.migrate()
    return container


def prepare_data(root: Path, *, supported: bool | None = None) -> Path:
    """Make `root`/data: image 1.0.0 (`supported` as in `Fleet.publish`), the built-in extensions, resource
    group GROUP and load balancer `lb` with probe `http`; returns `root`."""
    clock = FakeClock()
    container = make_container(root / "data", SimProvider(clock), clock)
    try:
        Fleet(container, SimProvider(clock), clock, root).publish("1.0.0", supported=supported)
        publish_builtin_extensions(container.extensions)
        container.scalesets.put_group(SUB, GROUP, {"location": "eastus"})
        container.loadbalancers.put(SUB, GROUP, "lb", LOAD_BALANCER)
    finally:
        container.close()
    return root


def fleet_on_copy(prepared: Path, tmp_path: Path) -> Iterator[Fleet]:
    """A Fleet on a copy of `prepared`/data in `tmp_path`, instances booting in BOOT_SECONDS; closed after."""
    shutil.copytree(prepared / "data", tmp_path / "data")
    clock = FakeClock()
    sim = SimProvider(clock, boot_seconds=BOOT_SECONDS)
    container = make_container(tmp_path / "data", sim, clock)
    try:
        yield Fleet(container, sim, clock, tmp_path)
    finally:
        container.close()
