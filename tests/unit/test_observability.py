"""Observability (issue 6 §5): the log context and its two formats, the metrics read from the store, and
`/metrics` with its request timing, on a real SQLite database and the real app."""

from __future__ import annotations

import asyncio
import doctest
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from scaleset.api.app import create_app
from scaleset.bootstrap import Container, Settings, build
from scaleset.observability import logs, requests, store_metrics
from scaleset.observability.batch_durations import BUCKETS
from scaleset.observability.logs import (
    ContextFilter,
    HumanFormatter,
    JsonFormatter,
    LogFormat,
    current_context,
    log_context,
    make_handler,
)
from scaleset.observability.metrics import Metrics
from scaleset.observability.requests import context_of_path
from scaleset.observability.store_metrics import instance_health
from scaleset.store.db import Database, sqlite_url
from scaleset.store.tables import (
    Instance,
    Operation,
    ResourceGroup,
    RollingUpgrade,
    ScaleSet,
    ScaleSetModel,
    Task,
    UpgradeInstance,
)
from tests.fakes import FakeClock, FakeProvider

SUB = "00000000-0000-0000-0000-000000000000"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# -- logs -----------------------------------------------------------------------------------------------


def capture(log_format: LogFormat) -> tuple[logging.Logger, io.StringIO]:
    """A logger of its own that writes through the handler `scaleset serve` installs."""
    stream = io.StringIO()
    logger = logging.getLogger(f"test.observability.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(make_handler(log_format, stream))
    return logger, stream


def test_log_context_nests_and_restores() -> None:
    assert current_context() == {}
    with log_context(set="web", group="rg"):
        with log_context(upgrade="3f2a9c1e-0000", batch=2, set=None):
            assert current_context() == {"group": "rg", "set": "web", "upgrade": "3f2a9c1e-0000", "batch": 2}
        assert current_context() == {"group": "rg", "set": "web"}
    assert current_context() == {}


def test_log_context_refuses_unknown_fields() -> None:
    with pytest.raises(TypeError, match="colour"), log_context(colour="red"):
        pass


def test_json_lines_carry_time_level_logger_message_and_context() -> None:
    logger, stream = capture(LogFormat.json)
    with log_context(subscription=SUB, group="rg", set="web", upgrade="run-1", batch=3):
        logger.info("batch %d started on %s", 3, "0,1")
    logger.warning("outside")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "batch 3 started on 0,1"
    assert (first["level"], first["logger"]) == ("INFO", logger.name)
    assert {k: first[k] for k in ("subscription", "group", "set", "upgrade", "batch")} == {
        "subscription": SUB,
        "group": "rg",
        "set": "web",
        "upgrade": "run-1",
        "batch": 3,
    }
    assert abs(datetime.fromisoformat(first["time"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert set(second) == {"time", "level", "logger", "message"}


def test_json_line_holds_the_traceback_on_one_line() -> None:
    logger, stream = capture(LogFormat.json)
    try:
        raise ValueError("the disk is gone")
    except ValueError:
        with log_context(set="web"):
            logger.exception("reimage failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["set"] == "web" and record["level"] == "ERROR"
    assert "ValueError: the disk is gone" in record["exception"]


def test_human_lines_get_a_prefix_only_inside_a_context() -> None:
    logger, stream = capture(LogFormat.human)
    with log_context(subscription=SUB, set="web", upgrade="3f2a9c1e-5d6b-4a1f", batch=2):
        logger.info("judged")
    logger.info("idle")
    inside, outside = stream.getvalue().splitlines()
    assert inside.endswith(f"INFO {logger.name} [set=web upgrade=3f2a9c1e batch=2] judged")
    assert SUB not in inside
    assert outside.endswith(f"INFO {logger.name} idle")


def test_a_record_keeps_the_context_it_was_made_in() -> None:
    # A handler that formats later (a queue, a buffer) must show where the record came from.
    held: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    logger = logging.getLogger(f"test.observability.{uuid.uuid4().hex}")
    logger.propagate = False
    keep = Keep()
    keep.addFilter(ContextFilter())
    logger.addHandler(keep)
    with log_context(set="web", batch=1):
        logger.warning("slow")
    assert json.loads(JsonFormatter().format(held[0]))["set"] == "web"
    assert "[set=web batch=1] slow" in HumanFormatter().format(held[0])


def test_contexts_do_not_leak_between_tasks_or_threads() -> None:
    async def work(name: str) -> dict[str, Any]:
        with log_context(set=name):
            await asyncio.sleep(0.01)  # both tasks are inside their blocks at once
            return current_context()

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(work("a"), work("b")))

    assert asyncio.run(both()) == [{"set": "a"}, {"set": "b"}]
    seen: list[dict[str, Any]] = []
    with log_context(set="web"):
        thread = threading.Thread(target=lambda: seen.append(current_context()))
        thread.start()
        thread.join()
    assert seen == [{}]  # a worker thread binds its own context


def test_paths_name_their_set_instance_and_operation() -> None:
    base = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
    assert context_of_path(f"{base}/virtualMachineScaleSets/web/rollingUpgrades/latest") == {
        "subscription": SUB,
        "group": "rg",
        "set": "web",
    }
    assert context_of_path(f"{base}/virtualMachineScaleSets/web/virtualMachines/4")["instance"] == "4"
    assert context_of_path(f"/subscriptions/{SUB}/resourcegroups/rg") == {"subscription": SUB, "group": "rg"}
    operation = f"/subscriptions/{SUB}/providers/Microsoft.Compute/locations/eastus/operations/op-1"
    assert context_of_path(operation) == {"subscription": SUB, "operation": "op-1"}
    assert context_of_path("/scaleset/health") == {}


# -- the store's metrics --------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(sqlite_url(tmp_path))
    database.migrate()
    yield database
    database.close()


class Rows:
    """Rows as the services and the engine write them, with only what a test cares about given."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._addresses = iter(range(1, 60000))

    def scale_set(self, group: str, name: str, *, models: list[dict[str, Any]]) -> int:
        with self.db.write() as session:
            found = session.query(ResourceGroup).filter_by(name_key=group.lower()).first()
            if found is None:
                found = ResourceGroup(
                    subscription=SUB,
                    name=group,
                    name_key=group.lower(),
                    location="eastus",
                    tags={},
                    provisioning_state="Succeeded",
                    created_at=T0,
                )
                session.add(found)
                session.flush()
            row = ScaleSet(
                uid=str(uuid.uuid4()),
                subscription=SUB,
                group_id=found.id,
                name=name,
                name_key=name.lower(),
                location="eastus",
                document={},
                model_version=len(models),
                exact_image_version="1.0.0",
                provisioning_state="Succeeded",
                next_instance_id=0,
                created_at=T0,
                updated_at=T0,
            )
            session.add(row)
            session.flush()
            for version, model in enumerate(models, start=1):
                session.add(
                    ScaleSetModel(
                        set_id=row.id,
                        version=version,
                        model=model,
                        exact_image_version="1.0.0",
                        created_at=T0,
                    )
                )
            return row.id

    def instances(
        self, set_id: int, count: int, *, provisioning: str, power: str, model_version: int = 1
    ) -> list[int]:
        ids = []
        with self.db.write() as session:
            for _ in range(count):
                n = next(self._addresses)
                row = Instance(
                    set_id=set_id,
                    instance_id=n,
                    vm_id=str(uuid.uuid4()),
                    zone=None,
                    fault_domain=0,
                    update_domain=0,
                    address=f"127.1.{n // 250}.{n % 250 + 1}",
                    model_version=model_version,
                    image_version="1.0.0",
                    os_disk_generation=1,
                    provisioning_state=provisioning,
                    power_state=power,
                    status_message="",
                    created_at=T0,
                    updated_at=T0,
                )
                session.add(row)
                session.flush()
                ids.append(row.id)
        return ids

    def run(self, set_id: int, *, kind: str = "os", status: str = "Completed", batch_number: int = 0) -> str:
        run_id = str(uuid.uuid4())
        with self.db.write() as session:
            operation = Operation(
                id=str(uuid.uuid4()),
                subscription=SUB,
                location="eastus",
                kind="rolling_upgrade",
                resource_id="/x",
                payload={},
                status="InProgress",
                error=None,
                start_time=T0,
                end_time=None,
            )
            session.add(operation)
            session.add(
                RollingUpgrade(
                    id=run_id,
                    set_id=set_id,
                    kind=kind,
                    started_by="User",
                    operation_id=operation.id,
                    policy={},
                    rollback_on_breach=False,
                    target_model_version=1,
                    target_image_version="1.0.0",
                    status=status,
                    phase="done" if status not in ("RollingForward", "RollingBack") else "upgrading",
                    batch_number=batch_number,
                    cancel_requested=False,
                    error=None,
                    last_action="Start",
                    last_action_time=T0,
                    start_time=T0,
                    end_time=None,
                )
            )
        return run_id

    def member(
        self,
        run_id: str,
        row_id: int,
        batch: int,
        state: str,
        updated_at: datetime,
        surge_row_id: int | None = None,
    ) -> None:
        with self.db.write() as session:
            session.add(
                UpgradeInstance(
                    upgrade_id=run_id,
                    instance_row_id=row_id,
                    instance_id=row_id,
                    batch=batch,
                    state=state,
                    action="surge" if surge_row_id else "reimage",
                    before_model_version=1,
                    before_image_version="1.0.0",
                    before_os_disk_generation=1,
                    surge_row_id=surge_row_id,
                    error="",
                    updated_at=updated_at,
                )
            )

    def judge(self, run_id: str, batch: int, state: str, at: datetime) -> None:
        with self.db.write() as session:
            for row in session.query(UpgradeInstance).filter_by(upgrade_id=run_id, batch=batch):
                row.state, row.updated_at = state, at

    def task(self, run_id: str, row_id: int, action: str, created_at: datetime) -> None:
        with self.db.write() as session:
            run = session.get(RollingUpgrade, run_id)
            assert run is not None and run.operation_id is not None
            session.add(
                Task(
                    operation_id=run.operation_id,
                    instance_row_id=row_id,
                    action=action,
                    status="done",
                    error="",
                    attempts=1,
                    created_at=created_at,
                    updated_at=created_at,
                )
            )


PROBED = {"networkProfile": {"healthProbe": {"id": "/subscriptions/x/loadBalancers/lb/probes/http"}}}
APP_HEALTH = {
    "extensionProfile": {
        "extensions": [{"name": "health", "properties": {"type": "ApplicationHealthLinux", "settings": {}}}]
    }
}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_instances_by_state_and_health(db: Database) -> None:
    rows = Rows(db)
    web = rows.scale_set("rg", "web", models=[{}, PROBED])
    rows.instances(web, 3, provisioning="succeeded", power="running")
    rows.instances(web, 1, provisioning="failed", power="running")
    rows.instances(web, 2, provisioning="succeeded", power="stopped")
    rows.instances(web, 1, provisioning="deleting", power="running")
    rows.instances(web, 4, provisioning="succeeded", power="running", model_version=2)  # probed: unknown
    api = rows.scale_set("rg", "api", models=[APP_HEALTH])
    rows.instances(api, 2, provisioning="updating", power="starting")
    rows.scale_set("other", "empty", models=[{}])
    registry = Metrics(db).registry

    def state(name: str, provisioning: str, power: str, group: str = "rg") -> float | None:
        return value(
            registry,
            "scaleset_instances",
            subscription=SUB,
            group=group,
            set=name,
            provisioning_state=provisioning,
            power_state=power,
        )

    def health(name: str, verdict: str, group: str = "rg") -> float | None:
        return value(
            registry, "scaleset_instances_health", subscription=SUB, group=group, set=name, health=verdict
        )

    assert state("web", "succeeded", "running") == 7  # both model versions
    assert state("web", "failed", "running") == 1
    assert state("web", "succeeded", "stopped") == 2
    assert state("web", "deleting", "running") == 1
    assert state("api", "updating", "starting") == 2
    assert state("web", "updating", "starting") is None
    # Not running or not provisioned: unhealthy; deleting: not counted; probed model: unknown.
    assert (health("web", "healthy"), health("web", "unhealthy"), health("web", "unknown")) == (3, 3, 4)
    assert (health("api", "healthy"), health("api", "unhealthy"), health("api", "unknown")) == (0, 2, 0)
    assert health("empty", "healthy", group="other") == 0  # a set with no instance still shows up


def test_rolling_upgrades_by_kind_and_status(db: Database) -> None:
    rows = Rows(db)
    web = rows.scale_set("rg", "web", models=[{}])
    for status in ("Completed", "Completed", "Faulted"):
        rows.run(web, kind="os", status=status)
    rows.run(web, kind="extension", status="RollingForward", batch_number=3)
    registry = Metrics(db).registry
    assert value(registry, "scaleset_rolling_upgrades", kind="os", status="Completed") == 2
    assert value(registry, "scaleset_rolling_upgrades", kind="os", status="Faulted") == 1
    assert value(registry, "scaleset_rolling_upgrades", kind="extension", status="RollingForward") == 1
    assert value(registry, "scaleset_rolling_upgrades", kind="model", status="RollingBack") == 0
    labels = {"subscription": SUB, "group": "rg", "set": "web"}
    assert value(registry, "scaleset_rolling_upgrade_current_batch", **labels, kind="extension") == 3
    assert value(registry, "scaleset_rolling_upgrade_current_batch", **labels, kind="os") is None


def bucket(registry: CollectorRegistry, kind: str, outcome: str, le: float) -> float | None:
    return value(
        registry,
        "scaleset_rolling_upgrade_batch_duration_seconds_bucket",
        kind=kind,
        outcome=outcome,
        le=str(float(le)),
    )


def test_batch_durations_come_from_tasks_and_judgements(db: Database) -> None:
    rows = Rows(db)
    web = rows.scale_set("rg", "web", models=[{}])
    a, b, c, d, replacement = rows.instances(web, 5, provisioning="succeeded", power="running")
    run = rows.run(web, kind="os", status="RollingForward", batch_number=3)
    # Batch 1: two reimages started at T0, judged healthy 40 s later.
    for row in (a, b):
        rows.task(run, row, "reimage", T0)
        rows.member(run, row, 1, "succeeded", T0 + timedelta(seconds=40))
    # Batch 2: started at 100 s, judged failed at 160 s (a rollback task is written then), and the rollback
    # finished at 400 s: the judgement, not the rollback's end, closes the batch.
    rows.task(run, c, "reimage", T0 + timedelta(seconds=100))
    rows.task(run, c, "restore", T0 + timedelta(seconds=160))
    rows.member(run, c, 2, "rolled_back", T0 + timedelta(seconds=400))
    # Batch 3 (maxSurge): a replacement created at 500 s; still upgrading.
    rows.task(run, replacement, "create", T0 + timedelta(seconds=500))
    rows.member(run, d, 3, "upgrading", T0 + timedelta(seconds=500), surge_row_id=replacement)
    metrics = Metrics(db)
    registry = metrics.registry

    count = "scaleset_rolling_upgrade_batch_duration_seconds_count"
    total = "scaleset_rolling_upgrade_batch_duration_seconds_sum"
    assert value(registry, count, kind="os", outcome="succeeded") == 1
    assert value(registry, total, kind="os", outcome="succeeded") == 40
    assert bucket(registry, "os", "succeeded", 30) == 0
    assert bucket(registry, "os", "succeeded", 60) == 1
    assert value(registry, count, kind="os", outcome="failed") == 1
    assert value(registry, total, kind="os", outcome="failed") == 60

    # The surge batch is judged at 800 s (the old instance's delete task is written then).
    rows.task(run, d, "delete", T0 + timedelta(seconds=800))
    rows.judge(run, 3, "succeeded", T0 + timedelta(seconds=800))
    assert value(registry, count, kind="os", outcome="succeeded") == 2
    assert value(registry, total, kind="os", outcome="succeeded") == 40 + 300
    assert bucket(registry, "os", "succeeded", 300) == 2
    assert bucket(registry, "os", "succeeded", BUCKETS[-1]) == 2
    # Scraping again counts nothing twice.
    assert value(registry, count, kind="os", outcome="succeeded") == 2
    assert (
        value(
            registry,
            "scaleset_rolling_upgrade_batch_duration_seconds_bucket",
            kind="os",
            outcome="succeeded",
            le="+Inf",
        )
        == 2
    )
    # A new process (a restart) reads the same history back from the database.
    again = Metrics(db).registry
    assert value(again, count, kind="os", outcome="succeeded") == 2
    assert value(again, total, kind="os", outcome="failed") == 60


# -- /metrics and request timing ------------------------------------------------------------------------


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    built = build(Settings(data_dir=tmp_path, workers=1), clock=FakeClock(), provider=FakeProvider())
    built.db.migrate()
    yield built
    built.db.close()


def test_metrics_needs_a_token_unless_public(container: Container) -> None:
    _, reader = container.tokens.create("reader", "prometheus")
    with TestClient(create_app(container)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "AuthenticationFailed"
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        allowed = client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert allowed.status_code == 200
        assert allowed.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "python_info" in allowed.text  # the process's own metrics come along
        openmetrics = client.get(
            "/metrics",
            headers={"Authorization": f"Bearer {reader}", "Accept": "application/openmetrics-text"},
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")
    with TestClient(create_app(container, metrics_public=True)) as client:
        assert client.get("/metrics").status_code == 200


SET_ROUTE = (
    "/subscriptions/{subscription}/resourcegroups/{group}/providers/microsoft.compute"
    "/virtualmachinescalesets/{name}"
)


def requests_counted(
    registry: CollectorRegistry, route: str, status: str, method: str = "GET"
) -> float | None:
    return value(
        registry, "scaleset_api_request_duration_seconds_count", method=method, route=route, status=status
    )


def test_requests_are_timed_by_route_template_and_carry_their_set(container: Container) -> None:
    _, token = container.tokens.create("reader", "reader")
    app = create_app(container)
    seen: list[dict[str, Any]] = []

    # Test-only routes under a set's path: one that logs, one that fails.
    @app.get(SET_ROUTE + "/observability-log")
    def logs_a_line(name: str) -> dict[str, str]:
        logging.getLogger("scaleset.test").warning("working on %s", name)
        return {}

    @app.get(SET_ROUTE + "/observability-crash")
    def crashes() -> None:
        raise RuntimeError("boom")

    class Remember(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(dict(getattr(record, "context", {})))

    remember = Remember()
    remember.addFilter(ContextFilter())
    logger = logging.getLogger("scaleset.test")
    logger.addHandler(remember)
    base = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets"
    lower = base.lower()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            for name in ("web", "api", "db"):  # three names, one route
                assert client.get(f"{base}/{name}", headers=headers).status_code == 404
            assert client.get("/no/such/path/1", headers=headers).status_code == 404
            assert client.get("/no/such/path/2", headers=headers).status_code == 404
            assert client.get(f"{lower}/Web/observability-log", headers=headers).status_code == 200
            assert client.get(f"{lower}/web/observability-crash", headers=headers).status_code == 500
    finally:
        logger.removeHandler(remember)
    registry = app.state.metrics.registry
    assert requests_counted(registry, SET_ROUTE, "404") == 3
    assert requests_counted(registry, "unmatched", "404") == 2
    assert requests_counted(registry, "/no/such/path/1", "404") is None
    assert requests_counted(registry, SET_ROUTE + "/observability-log", "200") == 1
    assert requests_counted(registry, SET_ROUTE + "/observability-crash", "500") == 1
    assert seen == [{"subscription": SUB, "group": "rg", "set": "Web"}]


@pytest.mark.parametrize("module", [logs, requests, store_metrics])
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_health_without_a_source_follows_power_and_provisioning() -> None:
    for power in ("starting", "running", "stopping", "stopped", "deallocated", "unknown"):
        for provisioning in ("creating", "updating", "succeeded", "failed"):
            expected = "healthy" if (power, provisioning) == ("running", "succeeded") else "unhealthy"
            assert instance_health(provisioning, power, has_source=False) == expected
            assert instance_health(provisioning, power, has_source=True) == (
                "unknown" if expected == "healthy" else "unhealthy"
            )
