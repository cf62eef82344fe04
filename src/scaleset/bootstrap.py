"""The composition root: the one place that picks concrete adapters and wires them together."""

from __future__ import annotations

import gc
import ipaddress
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from scaleset.catalog.extensions import ExtensionCatalog
from scaleset.catalog.service import ImageCatalog
from scaleset.engine.clock import Clock, SystemClock
from scaleset.engine.executor import Executor
from scaleset.engine.health import HealthReader
from scaleset.engine.rolling import RollingEngine
from scaleset.guest.builtin import builtin_packages
from scaleset.providers.base import Provider
from scaleset.providers.local import LocalProvider
from scaleset.services.addresses import DEFAULT_POOL, parse_pool
from scaleset.services.loadbalancers import LoadBalancerService
from scaleset.services.platform import PlatformUpgrades
from scaleset.services.platform_extensions import ExtensionPlatformUpgrades
from scaleset.services.rollouts import RolloutGate, load_rollout_phases
from scaleset.services.scalesets import ScaleSetService
from scaleset.services.secrets import SecretBox
from scaleset.services.tokens import TokenService
from scaleset.services.upgrades import UpgradeService
from scaleset.store.db import Database, sqlite_url

# The cyclic garbage collector's thresholds for the server process: (allocations before a young
# collection, young collections per middle one, middle collections per full one). See
# `tune_garbage_collection`.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_garbage_collection() -> None:
    """Collect cyclic garbage less often than Python's default (700, 10, 10), for the server process.

    The control plane keeps a large, long-lived working set (an instance record per simulated or real
    instance, probe streaks, cached rows), and an engine pass allocates tens of thousands of short-lived
    tuples and rows. With the default thresholds the collector runs every 700 allocations and a full
    collection walks the whole working set every 70 000: in an upgrade of 20 000 simulated instances that
    was about 2 CPU seconds of 45, and the share grows with the fleet. Reference counting still frees
    everything that is not in a cycle at once; cycles (ORM sessions make some) wait a little longer. Called
    by `scaleset serve` before it builds the container; the benchmarks call it to run as the server runs.
    """
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    address_pool: str = DEFAULT_POOL
    page_size: int = 100
    workers: int = 8
    observe_every: float = 2.0
    # How many instances one set may have at once: maxSurge falls back to in-place above it (Azure's quota
    # check before each batch). A set's tag `scaleset:instanceQuota` overrides it.
    instance_quota: int = 1000
    # How often the platform sweeps for automatic OS upgrades a crash or a busy set left waiting (seconds);
    # publishing, the end of a run and an operator's clear act at once without it.
    platform_sweep_every: float = field(
        default_factory=lambda: float(os.environ.get("SCALESET_PLATFORM_SWEEP_SECONDS") or 60)
    )

    # How long a failed automatic extension upgrade waits for its one automatic retry (seconds; Azure:
    # "retried after some time"; docs/automatic-extension-upgrades.md).
    extension_retry_seconds: float = field(
        default_factory=lambda: float(os.environ.get("SCALESET_EXTENSION_RETRY_SECONDS") or 259200)
    )

    # The rollout phases of platform upgrades (M-21, docs/availability-first.md): a JSON file, a list of
    # phases each a list of regions; None: the default phases.
    rollout_phases: Path | None = field(
        default_factory=lambda: (
            Path(os.environ["SCALESET_ROLLOUT_PHASES"]) if os.environ.get("SCALESET_ROLLOUT_PHASES") else None
        )
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir)


@dataclass
class Container:
    settings: Settings
    db: Database
    clock: Clock
    provider: Provider
    catalog: ImageCatalog
    extensions: ExtensionCatalog
    executor: Executor
    scalesets: ScaleSetService
    loadbalancers: LoadBalancerService
    health: HealthReader
    rolling: RollingEngine
    upgrades: UpgradeService
    platform: PlatformUpgrades
    rollouts: RolloutGate
    extension_platform: ExtensionPlatformUpgrades
    tokens: TokenService
    pool: ipaddress.IPv4Network

    def start(self) -> None:
        """Migrate the schema, publish the built-in handler packages, then resume the engine."""
        self.db.migrate()
        publish_builtin_extensions(self.extensions)
        self.executor.start()

    def close(self) -> None:
        self.executor.stop()
        self.provider.close()
        self.db.close()


def publish_builtin_extensions(catalog: ExtensionCatalog) -> list[str]:
    """Publish the handler packages scaleset ships (Application Health, CustomScript) once; returns what
    was published now."""
    published = []
    for package in builtin_packages():
        if catalog.find(package.publisher, package.type, package.version) is not None:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            assembled = package.assemble(Path(scratch) / package.path.name)
            catalog.publish(package.publisher, package.type, package.version, assembled, builtin=True)
        published.append(f"{package.handler_name} {package.version}")
    return published


def build(settings: Settings, *, clock: Clock | None = None, provider: Provider | None = None) -> Container:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    db = Database(settings.resolved_database_url)
    provider = provider or LocalProvider(settings.data_dir / "instances")
    catalog = ImageCatalog(db, settings.data_dir / "images", clock)
    extensions = ExtensionCatalog(db, settings.data_dir / "extensions", clock)
    secrets = SecretBox.in_directory(settings.data_dir)
    loadbalancers = LoadBalancerService(db, clock)
    executor = Executor(
        db, clock, provider, secrets, workers=settings.workers, observe_every=settings.observe_every
    )
    pool = parse_pool(settings.address_pool)
    scalesets = ScaleSetService(
        db, clock, catalog, pool, executor.wake, extensions, secrets, probe_exists=loadbalancers.probe_exists
    )
    health = HealthReader(provider, clock, loadbalancers.probe_settings)
    rollouts = RolloutGate(db, clock, load_rollout_phases(settings.rollout_phases))
    rolling = RollingEngine(
        db,
        clock,
        health,
        executor.wake,
        scalesets.create_instances,
        instance_quota=settings.instance_quota,
        admit_batch=rollouts.admit_batch,
    )
    upgrades = UpgradeService(db, clock, catalog, extensions, executor.wake)
    rolling.on_finish.append(upgrades.follow_up)
    platform = PlatformUpgrades(
        db, clock, catalog, executor.wake, sweep_every=settings.platform_sweep_every, rollouts=rollouts
    )
    catalog.on_publish.append(platform.on_image_published)
    rolling.on_finish.append(platform.on_run_finished)
    executor.reconcilers.append(rolling.step_all)
    executor.reconcilers.append(platform.reconcile)
    extension_platform = ExtensionPlatformUpgrades(
        db,
        clock,
        extensions,
        executor.wake,
        sweep_every=settings.platform_sweep_every,
        retry_after=settings.extension_retry_seconds,
        rollouts=rollouts,
    )
    extensions.on_publish.append(extension_platform.on_extension_published)
    rolling.on_finish.append(extension_platform.on_run_finished)
    executor.reconcilers.append(extension_platform.reconcile)
    return Container(
        settings=settings,
        db=db,
        clock=clock,
        provider=provider,
        catalog=catalog,
        extensions=extensions,
        executor=executor,
        scalesets=scalesets,
        loadbalancers=loadbalancers,
        health=health,
        rolling=rolling,
        upgrades=upgrades,
        platform=platform,
        rollouts=rollouts,
        extension_platform=extension_platform,
        tokens=TokenService(db, clock),
        pool=pool,
    )
