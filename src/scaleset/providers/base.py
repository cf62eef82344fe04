"""The provider contract: where instances live.

The engine decides; a provider only acts. Every method is idempotent, because the engine persists an
intent before calling the provider and may call again after a crash (M-26): creating an instance that
already exists, deleting one that is gone, or reimaging to a generation the OS disk already has must
succeed without doing the work twice.

Every provider passes the same conformance suite (`tests/providers/conformance.py`).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class InstanceState(enum.Enum):
    """One enum for every provider's power states; UNKNOWN is the fallback for anything unmapped."""

    RUNNING = "running"
    STOPPED = "stopped"
    DEALLOCATED = "deallocated"
    MISSING = "missing"  # the provider has no such instance (never created, or deleted)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ImageArtifact:
    """An unpacked image version: the directory an OS disk is copied from, and its manifest."""

    path: Path
    entrypoint: tuple[str, ...]
    ports: tuple[int, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a provider needs to build one instance.

    `key` names the instance uniquely inside the provider (the engine uses `<set uuid>/<instance id>`).
    `os_disk_generation` grows by one on every reimage the engine asks for; a provider records the
    generation its OS disk was made for, so that a repeated reimage of the same generation is a no-op.
    """

    key: str
    image: ImageArtifact
    address: str
    data_disk_luns: tuple[int, ...] = ()
    os_disk_generation: int = 1
    environment: Mapping[str, str] = field(default_factory=dict)
    # `osProfile.customData`, decoded: run once at the first boot of each OS disk (cloud-init's rule).
    custom_data: bytes | None = None
    # The guest agent's goal state (`scaleset.guest.goalstate.GoalState` as JSON); None: no extensions.
    goal_state: str | None = None
    # Certificates the guest needs for protected settings: (thumbprint, certificate PEM, private key PEM).
    certificates: tuple[tuple[str, bytes, bytes], ...] = ()


@dataclass(frozen=True)
class CustomDataResult:
    """How the custom data script of the current OS disk ended (or that it still runs)."""

    state: str  # "running" | "succeeded" | "failed"
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True)
class GuestReport:
    """What the guest says about itself: custom data, and the guest agent's status document
    (`scaleset.guest.goalstate.GuestStatus` as JSON), either None until the guest has written it."""

    custom_data: CustomDataResult | None = None
    guest_status: str | None = None


@dataclass(frozen=True)
class InstanceObservation:
    """What a provider sees of one instance right now."""

    state: InstanceState
    os_disk_generation: int | None = None
    message: str = ""


@dataclass(frozen=True)
class HealthProbe:
    """A load-balancer health probe as the control plane runs it against one instance
    (`Microsoft.Network/loadBalancers/{lb}/probes/{probe}`): `protocol` is Http, Https or Tcp; an Http(s)
    probe is healthy on a 200 answer to GET `request_path`, a Tcp probe when the handshake succeeds."""

    protocol: str
    port: int
    request_path: str | None = None
    timeout_seconds: float = 2.0


class ProviderError(Exception):
    """A provider could not do what it was asked; the message is shown to the user."""


class Provider(ABC):
    """Where instances live. Methods block until the action is done (or raise ProviderError)."""

    name: str = "abstract"
    # True when every action returns at once, waiting on nothing outside this process (the simulated
    # fleet keeps its instances in memory): the executor then runs the actions in its own thread instead of
    # handing each to a worker, which for thousands of instant actions costs more than the actions.
    acts_at_once: bool = False

    @abstractmethod
    def create_instance(self, spec: InstanceSpec) -> None:
        """Make the OS disk from the image and the data disks, then start the instance.

        Idempotent: an instance that exists already is only started if it is not running.
        """

    @abstractmethod
    def start_instance(self, spec: InstanceSpec) -> None:
        """Start a stopped or deallocated instance; no-op when running."""

    @abstractmethod
    def stop_instance(self, key: str) -> None:
        """Stop the instance's processes, keep its disks (powerOff); no-op when not running."""

    @abstractmethod
    def deallocate_instance(self, key: str) -> None:
        """Stop the instance and release its compute; disks are kept."""

    @abstractmethod
    def restart_instance(self, spec: InstanceSpec) -> None:
        """Stop then start, keeping every disk."""

    @abstractmethod
    def reimage_instance(self, spec: InstanceSpec) -> None:
        """Give the instance a fresh OS disk from `spec.image`, keep data disks, and start it.

        No-op when the OS disk already has `spec.os_disk_generation` and the instance is running.
        """

    @abstractmethod
    def restore_os_disk(self, spec: InstanceSpec) -> None:
        """Put back the OS disk the instance had before its last reimage, keep the data disks, and start it
        (rollback, M-10). `spec.os_disk_generation` is the generation of the disk to restore and `spec.image`
        the image it was made from; the disk comes back as it was, so its custom data does not run again.

        Idempotent: no-op when the OS disk already is of that generation and the instance runs.
        ProviderError when the provider kept no disk of that generation.
        """

    @abstractmethod
    def delete_instance(self, key: str) -> None:
        """Stop the instance and remove every disk; no-op when it does not exist."""

    @abstractmethod
    def describe_instance(self, key: str) -> InstanceObservation:
        """Observe one instance without changing it."""

    @abstractmethod
    def list_instance_keys(self) -> Sequence[str]:
        """Every instance key the provider holds, running or not."""

    @abstractmethod
    def apply_goal_state(self, spec: InstanceSpec) -> None:
        """Hand `spec.goal_state` and `spec.certificates` to the instance's guest agent, which applies them
        while the instance runs (and again at every boot). Idempotent; the guest reports through
        `read_guest_report`."""

    @abstractmethod
    def read_guest_report(self, key: str) -> GuestReport:
        """The guest's own report (custom data, extensions); empty when the guest has said nothing yet."""

    def probe_health(self, key: str, address: str, probe: HealthProbe) -> bool:
        """One load-balancer probe of the instance: True when it answers healthy.

        By default a real HTTP(S) request or TCP handshake to the instance's own address, as a load
        balancer probes a VM; a provider whose instances have no reachable address (the simulated fleet)
        answers from its own model instead.
        """
        from scaleset.providers.probing import probe_address

        return probe_address(address, probe)

    def probe_health_many(self, targets: Sequence[tuple[str, str]], probe: HealthProbe) -> list[bool]:
        """`probe_health` of many (key, address) pairs, the answers in order. By default one at a time; a
        provider that answers from its own model (the simulated fleet) does them all in one go."""
        return [self.probe_health(key, address, probe) for key, address in targets]

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release what the provider holds in this process; instances keep running."""
