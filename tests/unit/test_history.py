"""The OS upgrade history (M-14; azure-api.md §2.6): which runs count, the limits, the entries' counts and
the paging, on a real (temporary SQLite) database with runs written as the engine writes them, and the
route through the FastAPI app.

The runs are written directly as rows: the history is a view of what the engine persisted, and writing
the rows lets every test pick start times, outcomes and member states exactly (the engine itself is
covered by test_engine.py and the e2e tests).
"""

from __future__ import annotations

import copy
import doctest
import itertools
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from scaleset.api.app import create_app
from scaleset.bootstrap import Container, Settings, build
from scaleset.domain.errors import ArmError
from scaleset.services import history
from scaleset.services.history import HistoryLimits, HistoryService
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
from tests.support import SUBSCRIPTION, scale_set_body

GROUP = "rg-history"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PAGE_SIZE = 2
Json = dict[str, Any]
_addresses = itertools.count(10)


# ------------------------------------------------------------------------------------------ harness
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Container, FakeClock, str]]:
    """One migrated database (and app) for the module; every test makes its own scale set in it."""
    clock = FakeClock(NOW)
    data_dir: Path = tmp_path_factory.mktemp("history")
    container = build(Settings(data_dir=data_dir, page_size=PAGE_SIZE), clock=clock, provider=FakeProvider())
    container.db.migrate()
    _, token = container.tokens.create("reader", "history tests")
    with container.db.write() as session:
        session.add(
            ResourceGroup(
                subscription=SUBSCRIPTION,
                name=GROUP,
                name_key=GROUP.lower(),
                location="eastus",
                tags={},
                created_at=NOW,
            )
        )
    yield container, clock, token
    container.close()


@pytest.fixture
def container(world: tuple[Container, FakeClock, str]) -> Container:
    world[1].set(NOW)
    return world[0]


@pytest.fixture
def api(world: tuple[Container, FakeClock, str]) -> Iterator[TestClient]:
    world[1].set(NOW)
    with TestClient(create_app(world[0]), headers={"Authorization": f"Bearer {world[2]}"}) as client:
        yield client


@dataclass
class Fleet:
    """A scale set's rows, written as the services and the engine write them."""

    container: Container
    name: str
    set_id: int = 0
    versions: int = 0

    @classmethod
    def make(cls, container: Container) -> Fleet:
        fleet = cls(container, f"set-{uuid.uuid4().hex[:8]}")
        body = scale_set_body(2, version="latest")
        with container.db.write() as session:
            group = session.query(ResourceGroup).filter_by(name_key=GROUP.lower()).one()
            scale_set = ScaleSet(
                uid=str(uuid.uuid4()),
                subscription=SUBSCRIPTION,
                group_id=group.id,
                name=fleet.name,
                name_key=fleet.name.lower(),
                location="eastus",
                document=body,
                model_version=1,
                exact_image_version="1.0.0",
                provisioning_state="Succeeded",
                next_instance_id=0,
                created_at=NOW,
                updated_at=NOW,
            )
            session.add(scale_set)
            session.flush()
            fleet.set_id = scale_set.id
        fleet.add_model("1.0.0", body["properties"]["virtualMachineProfile"])
        return fleet

    def add_model(self, exact_version: str, model: Json | None = None, **image: str) -> int:
        """A new model version: the previous one with `image` fields changed (or `model` as given)."""
        with self.container.db.write() as session:
            if model is None:
                previous = session.get(ScaleSetModel, (self.set_id, self.versions))
                assert previous is not None
                model = copy.deepcopy(previous.model)
                model["storageProfile"]["imageReference"].update(image)
            self.versions += 1
            session.add(
                ScaleSetModel(
                    set_id=self.set_id,
                    version=self.versions,
                    model=model,
                    exact_image_version=exact_version,
                    created_at=NOW,
                )
            )
            scale_set = session.get(ScaleSet, self.set_id)
            assert scale_set is not None
            scale_set.model_version, scale_set.exact_image_version = self.versions, exact_version
        return self.versions

    def add_extension_model(self) -> int:
        """A new model version that only adds an extension (the image stays)."""
        with self.container.db.read() as session:
            previous = session.get(ScaleSetModel, (self.set_id, self.versions))
            assert previous is not None
            model, exact = copy.deepcopy(previous.model), previous.exact_image_version
        model["extensionProfile"] = {"extensions": [{"name": "x", "properties": {"type": "t"}}]}
        return self.add_model(exact, model)

    def add_instance(self, model_version: int, image_version: str) -> int:
        with self.container.db.write() as session:
            scale_set = session.get(ScaleSet, self.set_id)
            assert scale_set is not None
            number = next(_addresses)
            instance = Instance(
                set_id=self.set_id,
                instance_id=scale_set.next_instance_id,
                vm_id=str(uuid.uuid4()),
                zone=None,
                fault_domain=0,
                update_domain=0,
                address=f"127.99.{number // 250}.{number % 250 + 1}",
                model_version=model_version,
                image_version=image_version,
                provisioning_state="succeeded",
                power_state="running",
                created_at=NOW,
                updated_at=NOW,
            )
            scale_set.next_instance_id += 1
            session.add(instance)
            session.flush()
            return instance.id

    def add_run(
        self,
        kind: str,
        started: datetime,
        *,
        target: int | None = None,
        status: str = "Completed",
        started_by: str = "User",
        error: Json | None = None,
        members: Sequence[tuple[str, int, str]] = (),
        failed_tasks: dict[int, str] | None = None,
    ) -> str:
        """A run towards model version `target` (default: the newest); `members` are (state, before model
        version, before image version), one instance each; `failed_tasks` maps a member's index to the
        error of a failed task of the run on it."""
        target = target or self.versions
        run_id = str(uuid.uuid4())
        ended = status not in ("RollingForward", "RollingBack")
        with self.container.db.write() as session:
            model = session.get(ScaleSetModel, (self.set_id, target))
            assert model is not None
            operation = Operation(
                id=str(uuid.uuid4()),
                subscription=SUBSCRIPTION,
                location="eastus",
                kind="rolling_upgrade",
                resource_id=self.name,
                payload={"upgrade_id": run_id},
                status="Succeeded" if ended else "InProgress",
                start_time=started,
                end_time=started + timedelta(minutes=3) if ended else None,
            )
            session.add(operation)
            session.add(
                RollingUpgrade(
                    id=run_id,
                    set_id=self.set_id,
                    kind=kind,
                    started_by=started_by,
                    operation_id=operation.id,
                    policy={"maxBatchInstancePercent": 20},
                    rollback_on_breach=False,
                    target_model_version=target,
                    target_image_version=model.exact_image_version,
                    status=status,
                    phase="done" if ended else "upgrading",
                    error=error,
                    last_action_time=started,
                    start_time=started,
                    end_time=started + timedelta(minutes=3) if ended else None,
                )
            )
        for index, (state, before_model, before_image) in enumerate(members):
            row_id = self.add_instance(target, model.exact_image_version)
            with self.container.db.write() as session:
                session.add(
                    UpgradeInstance(
                        upgrade_id=run_id,
                        instance_row_id=row_id,
                        instance_id=row_id,
                        batch=1,
                        state=state,
                        action="reimage",
                        before_model_version=before_model,
                        before_image_version=before_image,
                        before_os_disk_generation=1,
                        error="not healthy within the health wait of batch 1",
                        updated_at=started,
                    )
                )
                if failed_tasks and index in failed_tasks:
                    session.add(
                        Task(
                            operation_id=operation.id,
                            instance_row_id=row_id,
                            action="restore",
                            status="failed",
                            error=failed_tasks[index],
                            created_at=started,
                            updated_at=started,
                        )
                    )
        return run_id

    def history(self, **limits: Any) -> list[Any]:
        page = HistoryService(self.container.db, self.container.clock).page(
            SUBSCRIPTION, GROUP, self.name, limits=HistoryLimits(**limits), page_size=1000
        )
        return page.entries

    def run_ids(self, **limits: Any) -> list[str]:
        return [entry.status.run.id for entry in self.history(**limits)]

    def path(self, literal: str = "osUpgradeHistory") -> str:
        return (
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
            f"virtualMachineScaleSets/{self.name}/{literal}"
        )


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


# ----------------------------------------------------------------------------------- worked examples
def test_docstring_examples() -> None:
    """The worked examples in services/history.py hold."""
    result = doctest.testmod(history, raise_on_error=False)
    assert result.attempted >= 6 and result.failed == 0, result


# ---------------------------------------------------------------------------------------- the limits
def test_by_default_the_five_newest_attempts_of_the_last_60_days(container: Container) -> None:
    """M-14: "the last five OS upgrade attempts within the past two months", newest first."""
    fleet = Fleet.make(container)
    fleet.add_model("1.1.0", version="1.1.0")
    runs = {age: fleet.add_run("os", days_ago(age)) for age in (1, 3, 7, 20, 35, 50, 59)}
    fleet.add_run("os", days_ago(61))  # outside the window

    assert fleet.run_ids() == [runs[age] for age in (1, 3, 7, 20, 35)]


def test_the_window_is_60_days_to_the_microsecond(container: Container) -> None:
    fleet = Fleet.make(container)
    fleet.add_model("1.1.0", version="1.1.0")
    inside = fleet.add_run("os", NOW - timedelta(days=60))
    fleet.add_run("os", NOW - timedelta(days=60, microseconds=1))

    assert fleet.run_ids() == [inside]


def test_top_and_since_ask_for_more(container: Container) -> None:
    fleet = Fleet.make(container)
    fleet.add_model("1.1.0", version="1.1.0")
    ages = (1, 2, 3, 4, 5, 6, 70, 100)
    runs = {age: fleet.add_run("os", days_ago(age)) for age in ages}

    assert fleet.run_ids(count=7) == [runs[age] for age in (1, 2, 3, 4, 5, 6)]  # the window still holds
    assert fleet.run_ids(count=10, since=days_ago(80)) == [runs[age] for age in ages[:7]]
    assert fleet.run_ids(count=2, since=days_ago(365)) == [runs[1], runs[2]]
    assert fleet.run_ids(since=days_ago(2.5)) == [runs[1], runs[2]]


def test_runs_started_after_the_moment_asked_about_are_not_shown(container: Container) -> None:
    """A page cut as of an earlier moment (a later page's token) does not see runs started since."""
    fleet = Fleet.make(container)
    fleet.add_model("1.1.0", version="1.1.0")
    old = fleet.add_run("os", days_ago(1))
    fleet.add_run("os", NOW + timedelta(seconds=1))
    page = HistoryService(container.db, container.clock).page(
        SUBSCRIPTION, GROUP, fleet.name, limits=HistoryLimits(), page_size=10, as_of=NOW
    )
    assert [entry.status.run.id for entry in page.entries] == [old]


@pytest.mark.parametrize("count", [0, -1, 1001])
def test_top_out_of_range_is_invalid(count: int) -> None:
    with pytest.raises(ArmError) as error:
        HistoryLimits(count=count)
    assert (error.value.status, error.value.code, error.value.target) == (400, "InvalidParameter", "$top")


# -------------------------------------------------------------------------------- which runs count
def test_which_runs_are_os_upgrade_attempts(container: Container) -> None:
    """`os` runs always; `model` runs only when they change the image; `extension` runs never."""
    fleet = Fleet.make(container)
    v2 = fleet.add_model("1.1.0", version="1.1.0")
    os_run = fleet.add_run("os", days_ago(9), target=v2, members=[("succeeded", 1, "1.0.0")])
    v3 = fleet.add_extension_model()
    fleet.add_run("model", days_ago(8), target=v3, members=[("succeeded", v2, "1.1.0")])  # extensions only
    fleet.add_run("extension", days_ago(7), target=v3)
    v4 = fleet.add_model("2.0.0", version="2.0.0")
    new_version = fleet.add_run("model", days_ago(6), target=v4, members=[("succeeded", v3, "1.1.0")])
    v5 = fleet.add_model("2.0.0", sku="other")  # another SKU, same version string
    new_sku = fleet.add_run("model", days_ago(5), target=v5, members=[("succeeded", v4, "2.0.0")])

    assert fleet.run_ids(count=10) == [new_sku, new_version, os_run]


def test_a_model_run_after_a_change_made_during_another_run_counts(container: Container) -> None:
    """The image changed in v3 while a run towards v2 went on; the follow-up run targets v4 (an extension
    change on top of v3). v4 has v3's image, but the instances it took ran v2's older image."""
    fleet = Fleet.make(container)
    v2 = fleet.add_extension_model()
    fleet.add_run("model", days_ago(3), target=v2, members=[("succeeded", 1, "1.0.0")])
    fleet.add_model("1.1.0", version="1.1.0")
    v4 = fleet.add_extension_model()
    follow_up = fleet.add_run("model", days_ago(2), target=v4, members=[("succeeded", v2, "1.0.0")])

    assert fleet.run_ids() == [follow_up]


def test_a_model_run_cancelled_before_its_first_batch_counts_when_its_model_changed_the_image(
    container: Container,
) -> None:
    fleet = Fleet.make(container)
    v2 = fleet.add_model("1.1.0", version="1.1.0")
    cancelled = fleet.add_run("model", days_ago(1), target=v2, status="Cancelled")
    v3 = fleet.add_extension_model()
    fleet.add_run("model", days_ago(0.5), target=v3, status="Cancelled")

    assert fleet.run_ids() == [cancelled]


def test_extension_only_model_runs_do_not_use_up_the_five(container: Container) -> None:
    fleet = Fleet.make(container)
    v2 = fleet.add_model("1.1.0", version="1.1.0")
    attempts = [fleet.add_run("os", days_ago(10 + n), target=v2) for n in range(5)]
    for n in range(4):
        version = fleet.add_extension_model()
        fleet.add_run("model", days_ago(1 + n), target=version)

    assert fleet.run_ids() == attempts


# ------------------------------------------------------------------------------------- the entries
def test_an_entry_has_its_counts_target_image_and_rollback(container: Container) -> None:
    fleet = Fleet.make(container)
    v2 = fleet.add_model("2.0.0", version="2.0.0")
    breach = {"code": "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade", "message": "2 of 2"}
    fleet.add_run(
        "os",
        days_ago(1),
        target=v2,
        status="Faulted",
        started_by="Platform",
        error=breach,
        members=[("succeeded", 1, "1.0.0"), ("rolled_back", 1, "1.0.0"), ("rollback_failed", 1, "1.0.0")],
        failed_tasks={2: "the previous OS disk is gone"},
    )

    (entry,) = fleet.history()
    assert entry.status.run.status == "Faulted"
    assert entry.status.run.started_by == "Platform"
    assert entry.status.run.error == breach
    assert entry.status.progress == {
        "successfulInstanceCount": 1,
        "failedInstanceCount": 2,
        "inProgressInstanceCount": 0,
        "pendingInstanceCount": 0,
    }
    assert (entry.status.rolled_back, entry.status.rollback_failed) == (1, 1)
    assert [why for _, why in entry.rollback_errors] == ["the previous OS disk is gone"]
    # The model asks for `latest`; the entry names the version the run went to.
    assert entry.target_image == {
        "publisher": "scaleset",
        "offer": "webapp",
        "sku": "stable",
        "version": "2.0.0",
    }


def test_a_running_upgrade_counts_the_instances_still_to_do(container: Container) -> None:
    fleet = Fleet.make(container)
    fleet.add_instance(1, "1.0.0")
    fleet.add_instance(1, "1.0.0")
    v2 = fleet.add_model("1.1.0", version="1.1.0")
    fleet.add_run("os", days_ago(0), target=v2, status="RollingForward", members=[("upgrading", 1, "1.0.0")])

    (entry,) = fleet.history()
    assert entry.status.run.end_time is None
    assert entry.status.progress == {
        "successfulInstanceCount": 0,
        "failedInstanceCount": 0,
        "inProgressInstanceCount": 1,
        "pendingInstanceCount": 2,
    }


def test_a_custom_image_target_names_its_version_in_exact_version() -> None:
    model = {"storageProfile": {"imageReference": {"id": "/subscriptions/s/images/web"}}}
    assert history.target_image_reference(model, "3.0.0") == {
        "id": "/subscriptions/s/images/web",
        "exactVersion": "3.0.0",
    }


def test_an_unknown_set_is_404(container: Container) -> None:
    with pytest.raises(ArmError) as error:
        HistoryService(container.db, container.clock).page(
            SUBSCRIPTION, GROUP, "nope", limits=HistoryLimits(), page_size=5
        )
    assert (error.value.status, error.value.code) == (404, "ResourceNotFound")


# ----------------------------------------------------------------------------------- the REST route
def follow(api: TestClient, path: str, params: Json | None = None) -> list[Json]:
    """Every page, as a client following nextLink does; returns the pages' bodies."""
    pages = [api.get(path, params={"api-version": "2026-04-01", **(params or {})})]
    while True:
        assert pages[-1].status_code == 200, pages[-1].text
        link = pages[-1].json().get("nextLink")
        if not link:
            return [page.json() for page in pages]
        pages.append(api.get(link))


def test_the_route_pages_newest_first_in_azures_shape(api: TestClient, container: Container) -> None:
    fleet = Fleet.make(container)
    v2 = fleet.add_model("1.1.0", version="1.1.0")
    runs = [fleet.add_run("os", days_ago(age), target=v2) for age in (1, 2, 3, 4, 5, 6)]

    pages = follow(api, fleet.path())

    assert [len(page["value"]) for page in pages] == [2, 2, 1]  # five entries, two a page
    entries = [entry for page in pages for entry in page["value"]]
    starts = [entry["properties"]["runningStatus"]["startTime"] for entry in entries]
    assert starts == [days_ago(age).isoformat() for age in (1, 2, 3, 4, 5)]
    first = entries[0]
    assert first["type"] == "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades"
    assert first["location"] == "eastus"
    assert "id" not in first and "name" not in first
    assert first["properties"] == {
        "runningStatus": {
            "code": "Completed",
            "startTime": days_ago(1).isoformat(),
            "endTime": (days_ago(1) + timedelta(minutes=3)).isoformat(),
        },
        "progress": {
            "successfulInstanceCount": 0,
            "failedInstanceCount": 0,
            "inProgressInstanceCount": 0,
            "pendingInstanceCount": 0,
        },
        "startedBy": "User",
        "targetImageReference": {
            "publisher": "scaleset",
            "offer": "webapp",
            "sku": "stable",
            "version": "1.1.0",
        },
        "rollbackInfo": {"successfullyRolledbackInstanceCount": 0, "failedRolledbackInstanceCount": 0},
    }
    assert len(runs) == 6
    # The links keep the caller's query (api-version) and say where the next page starts.
    query = parse_qs(urlsplit(pages[0]["nextLink"]).query)
    assert query["api-version"] == ["2026-04-01"]
    assert query["$skiptoken"][0].startswith("2-")


def test_pages_do_not_shift_when_an_upgrade_starts_while_a_client_pages(
    api: TestClient, container: Container, world: tuple[Container, FakeClock, str]
) -> None:
    fleet = Fleet.make(container)
    v2 = fleet.add_model("1.1.0", version="1.1.0")
    runs = [fleet.add_run("os", days_ago(age), target=v2) for age in (1, 2, 3)]
    first = api.get(fleet.path(), params={"api-version": "x"}).json()
    fleet.add_run("os", world[1].advance(minutes=1), target=v2)

    rest = api.get(first["nextLink"]).json()

    shown = [e["properties"]["runningStatus"]["startTime"] for e in first["value"] + rest["value"]]
    assert shown == [days_ago(age).isoformat() for age in (1, 2, 3)]
    assert len(runs) == 3
    assert "nextLink" not in rest
    # A fresh request sees the new one first.
    fresh = follow(api, fleet.path())
    assert len([e for page in fresh for e in page["value"]]) == 4


def test_top_and_since_reach_the_route_and_survive_paging(api: TestClient, container: Container) -> None:
    fleet = Fleet.make(container)
    v2 = fleet.add_model("1.1.0", version="1.1.0")
    for age in (1, 2, 3, 4, 5, 6, 90):
        fleet.add_run("os", days_ago(age), target=v2)

    pages = follow(api, fleet.path(), {"$top": "7", "since": days_ago(100).date().isoformat()})

    assert sum(len(page["value"]) for page in pages) == 7
    assert len(pages) == 4


def test_the_path_is_case_insensitive(api: TestClient, container: Container) -> None:
    fleet = Fleet.make(container)
    response = api.get(fleet.path("OSUPGRADEHISTORY").lower(), params={"api-version": "2023-09-01"})
    assert response.status_code == 200, response.text
    assert response.json() == {"value": []}


@pytest.mark.parametrize(
    ("params", "target"),
    [
        ({"$top": "0"}, "$top"),
        ({"$top": "five"}, "$top"),
        ({"$top": "1001"}, "$top"),
        ({"since": "last tuesday"}, "since"),
        ({"$skiptoken": "2"}, "$skiptoken"),
        ({"$skiptoken": "a-1"}, "$skiptoken"),
        ({"$skiptoken": "2-" + "9" * 18}, "$skiptoken"),
    ],
)
def test_bad_query_parameters_are_400_invalid_parameter(
    api: TestClient, container: Container, params: dict[str, str], target: str
) -> None:
    fleet = Fleet.make(container)
    response = api.get(fleet.path(), params={"api-version": "2026-04-01", **params})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["target"]) == ("InvalidParameter", target)


def test_the_route_answers_404_for_an_unknown_set(api: TestClient) -> None:
    path = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
        "virtualMachineScaleSets/nope/osUpgradeHistory"
    )
    response = api.get(path, params={"api-version": "2026-04-01"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ResourceNotFound"


def test_the_route_needs_a_token(api: TestClient, container: Container) -> None:
    fleet = Fleet.make(container)
    response = api.get(fleet.path(), params={"api-version": "1"}, headers={"Authorization": ""})
    assert response.status_code == 401
