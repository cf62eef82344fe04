"""The fake provider's guest: what it reports by default, and the knobs that make it report trouble.

The conformance suite (`test_fake.py`) holds the fake's guest to the contract; these tests cover what only
the fake offers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaleset.guest.agent import CODE_ENABLE_FAILED
from scaleset.guest.goalstate import GoalState
from scaleset.providers.base import CustomDataResult, ImageArtifact, InstanceSpec, ProviderError
from tests.fakes import FakeProvider
from tests.providers.conformance import guest_status, probe_extension, with_guest

KEY = "fake-set/0"
PACKAGE = Path("/packages/probe")  # the fake never looks at it


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    yield FakeProvider()


@pytest.fixture
def image(tmp_path: Path) -> ImageArtifact:
    return ImageArtifact(path=tmp_path, entrypoint=("python3", "app.py"), ports=(8080,))


def spec(image: ImageArtifact, generation: int = 1, **guest: object) -> InstanceSpec:
    base = InstanceSpec(KEY, image, "127.99.0.1", (0,), generation)
    return with_guest(base, **guest)  # type: ignore[arg-type]


def goal(incarnation: int, *names: str) -> GoalState:
    return GoalState(
        incarnation,
        tuple(probe_extension(PACKAGE, name=name, type_=f"T{index}") for index, name in enumerate(names)),
    )


def test_custom_data_runs_once_per_os_disk(fake: FakeProvider, image: ImageArtifact) -> None:
    fake.create_instance(spec(image, custom_data=b"echo hi"))
    fake.restart_instance(spec(image, custom_data=b"echo hi"))
    fake.stop_instance(KEY)
    fake.start_instance(spec(image, custom_data=b"echo hi"))
    assert fake.custom_data_runs[KEY] == 1

    fake.reimage_instance(spec(image, generation=2, custom_data=b"echo hi"))
    fake.reimage_instance(spec(image, generation=2, custom_data=b"echo hi"))  # the same disk: no-op

    assert fake.custom_data_runs[KEY] == 2
    result = fake.read_guest_report(KEY).custom_data
    assert result == CustomDataResult("succeeded", 0, "custom data script exited with 0")


def test_custom_data_added_later_waits_for_a_new_os_disk(fake: FakeProvider, image: ImageArtifact) -> None:
    fake.create_instance(spec(image))

    fake.restart_instance(spec(image, custom_data=b"echo hi"))
    assert fake.read_guest_report(KEY).custom_data is None

    fake.reimage_instance(spec(image, generation=2, custom_data=b"echo hi"))
    assert fake.custom_data_runs[KEY] == 1


def test_goal_states_are_applied_at_every_boot_and_each_new_incarnation(
    fake: FakeProvider, image: ImageArtifact
) -> None:
    fake.create_instance(spec(image, goal=goal(1, "a")))
    fake.apply_goal_state(spec(image, goal=goal(1, "a")))  # the same incarnation: nothing to do
    fake.restart_instance(spec(image, goal=goal(1, "a")))
    fake.apply_goal_state(spec(image, goal=goal(2, "a", "b")))
    fake.stop_instance(KEY)
    fake.apply_goal_state(spec(image, goal=goal(3, "b")))  # stopped: at the next start

    assert fake.goal_states_applied == [(KEY, 1), (KEY, 1), (KEY, 2)]
    status = guest_status(fake, KEY)
    assert status is not None and status.incarnation_applied == 2
    assert [extension.name for extension in status.extensions] == ["a", "b"]

    fake.start_instance(spec(image, goal=goal(3, "b")))
    status = guest_status(fake, KEY)
    assert status is not None and status.incarnation_applied == 3
    assert [extension.name for extension in status.extensions] == ["b"]
    assert fake.calls_on(KEY).count("apply_goal_state") == 3


def test_an_extension_can_be_made_to_fail(fake: FakeProvider, image: ImageArtifact) -> None:
    fake.fail_extension(KEY, "b", "Non-zero exit code: 3")

    fake.create_instance(spec(image, goal=goal(1, "a", "b")))

    status = guest_status(fake, KEY)
    assert status is not None
    good, bad = status.extension("a"), status.extension("b")
    assert good is not None and good.settings_status is not None
    assert (good.handler_status, good.settings_status.status) == ("Ready", "success")
    assert bad is not None and bad.settings_status is not None
    assert (bad.handler_status, bad.handler_code, bad.handler_message) == (
        "NotReady",
        CODE_ENABLE_FAILED,
        "Non-zero exit code: 3",
    )
    assert bad.settings_status.status == "error"

    fake.clear_guest_failures()
    status = guest_status(fake, KEY)
    assert status is not None and {e.handler_status for e in status.extensions} == {"Ready"}


def test_custom_data_can_be_made_to_fail(fake: FakeProvider, image: ImageArtifact) -> None:
    fake.fail_custom_data(KEY, exit_code=7, output="apt-get: not found")

    fake.create_instance(spec(image, custom_data=b"apt-get install nginx"))

    assert fake.read_guest_report(KEY).custom_data == CustomDataResult(
        "failed", 7, "custom data script exited with 7: apt-get: not found"
    )


def test_a_held_guest_reports_work_in_progress(fake: FakeProvider, image: ImageArtifact) -> None:
    fake.create_instance(spec(image, goal=goal(1, "a"), custom_data=b"echo hi"))
    fake.hold_guest(KEY)
    fake.apply_goal_state(spec(image, goal=goal(2, "a"), custom_data=b"echo hi"))

    report = fake.read_guest_report(KEY)
    status = guest_status(fake, KEY)
    assert report.custom_data == CustomDataResult("running")
    assert status is not None
    assert (status.incarnation_applied, status.incarnation_applying) == (1, 2)

    fake.release_guest(KEY)
    status = guest_status(fake, KEY)
    assert status is not None and (status.incarnation_applied, status.incarnation_applying) == (2, None)


def test_apply_goal_state_can_be_made_to_fail(fake: FakeProvider, image: ImageArtifact) -> None:
    fake.create_instance(spec(image, goal=goal(1, "a")))
    fake.fail_next("apply_goal_state", KEY, "agent unreachable")

    with pytest.raises(ProviderError, match="agent unreachable"):
        fake.apply_goal_state(spec(image, goal=goal(2, "a")))

    status = guest_status(fake, KEY)
    assert status is not None and status.incarnation_applied == 1


def test_the_guest_survives_a_snapshot(fake: FakeProvider, image: ImageArtifact) -> None:
    fake.create_instance(spec(image, goal=goal(1, "a"), custom_data=b"echo hi"))

    restarted = FakeProvider(initial=fake.snapshot())

    assert restarted.read_guest_report(KEY) == fake.read_guest_report(KEY)
    restarted.restart_instance(dataclasses.replace(spec(image, goal=goal(1, "a")), custom_data=b"echo hi"))
    assert restarted.custom_data_runs[KEY] == 0  # the disk had run it already
