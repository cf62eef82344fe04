"""The `scaleset` CLI end to end: real subprocesses against a real `scaleset serve`.

The `server` fixture (tests/e2e/conftest.py) is shared by the whole session, so every test uses its
own publisher, group and scale-set names.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Protocol

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WEBAPP_1_0_0 = REPO / "examples" / "images" / "webapp-1.0.0"
LOCATION = "eastus"
CLI_TIMEOUT = 300


class Server(Protocol):
    endpoint: str
    admin_token: str
    data_dir: Path
    subscription: str
    env: dict[str, str]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def cli(server: Server, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(server.env)
    env["SCALESET_SUBSCRIPTION"] = server.subscription
    if token is not None:
        env["SCALESET_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "scaleset.cli.main", *args],
        env=env,
        stdin=subprocess.DEVNULL,  # never a terminal: confirmations must be refused, not hang
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, describe(result)
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def failed(result: subprocess.CompletedProcess[str], code: str, exit_code: int = 1) -> str:
    assert result.returncode == exit_code, f"expected exit {exit_code}: {describe(result)}"
    # Usage errors come in a Rich panel that may wrap: compare with the frame and wrapping removed.
    flat = re.sub(r"[\s│╭╮╰╯─]+", " ", result.stderr)
    assert code in flat, result.stderr
    return flat


def publish(server: Server, publisher: str, version: str = "1.0.0", source: Path = WEBAPP_1_0_0) -> Any:
    return ok_json(
        cli(
            server,
            "image",
            "publish",
            "--location",
            LOCATION,
            "--publisher",
            publisher,
            "--offer",
            "webapp",
            "--sku",
            "stable",
            "--version",
            version,
            str(source),
        )
    )


def power_state(vm: dict[str, Any]) -> str | None:
    statuses = (vm.get("properties") or {}).get("instanceView", {}).get("statuses") or []
    for status in statuses:
        code = status.get("code", "")
        if code.startswith("PowerState/"):
            return str(code.split("/", 1)[1])
    return None


def instances(server: Server, group: str, name: str) -> dict[str, dict[str, Any]]:
    listed = ok_json(
        cli(server, "vmss", "list-instances", "-g", group, "-n", name, "--expand", "instanceView")
    )
    return {vm["instanceId"]: vm for vm in listed}


def test_publish_then_list_and_show_images(server: Server) -> None:
    publisher = unique("clipub")
    image = publish(server, publisher)
    assert image["name"] == "1.0.0"

    listed = ok_json(cli(server, "vm", "image", "list", "--all", "-l", LOCATION, "-p", publisher))
    assert [item["urn"] for item in listed] == [f"{publisher}:webapp:stable:1.0.0"]
    assert listed[0]["publisher"] == publisher
    assert listed[0]["version"] == "1.0.0"

    # Filters are case-insensitive partial matches; the table shows the URN.
    table = ok(cli(server, "vm", "image", "list", "-l", LOCATION, "-p", publisher.upper()[2:], "-o", "table"))
    assert f"{publisher}:webapp:stable:1.0.0" in table

    shown = ok_json(
        cli(server, "vm", "image", "show", "--urn", f"{publisher}:webapp:stable:latest", "-l", LOCATION)
    )
    assert shown["name"] == "1.0.0"

    failed(
        cli(server, "vm", "image", "show", "--urn", f"{publisher}:webapp:stable", "-l", LOCATION), "URN", 2
    )
    again = cli(
        server,
        "image",
        "publish",
        "-l",
        LOCATION,
        "-p",
        publisher,
        "-f",
        "webapp",
        "-s",
        "stable",
        "--version",
        "1.0.0",
        str(WEBAPP_1_0_0),
    )
    failed(again, "ERROR (Conflict)")


def test_scale_set_lifecycle(server: Server) -> None:
    publisher = unique("clipub")
    group = unique("clirg")
    name = unique("web")
    publish(server, publisher)

    created_group = ok_json(
        cli(server, "group", "create", "-n", group, "-l", LOCATION, "--tags", "owner=e2e")
    )
    assert created_group["location"] == LOCATION
    assert created_group["tags"] == {"owner": "e2e"}
    assert group in ok(cli(server, "group", "list", "-o", "table"))

    created = ok_json(
        cli(
            server,
            "vmss",
            "create",
            "-g",
            group,
            "-n",
            name,
            "--image",
            f"{publisher}:webapp:stable:1.0.0",
            "--instance-count",
            "2",
        )
    )
    assert created["name"] == name
    assert created["location"] == LOCATION  # from the group
    assert created["sku"]["capacity"] == 2
    assert created["properties"]["provisioningState"] == "Succeeded"
    assert created["properties"]["upgradePolicy"]["mode"] == "Manual"

    table = ok(cli(server, "vmss", "list-instances", "-g", group, "-n", name, "-o", "table"))
    rows = [line for line in table.splitlines() if re.match(r"^\s*\d+\s", line)]
    assert len(rows) == 2, table
    assert "InstanceId" in table

    listed_sets = ok(cli(server, "vmss", "list", "-g", group, "-o", "table"))
    assert name in listed_sets

    scaled = ok_json(cli(server, "vmss", "scale", "-g", group, "-n", name, "--new-capacity", "3"))
    assert scaled["sku"]["capacity"] == 3
    assert sorted(instances(server, group, name)) == ["0", "1", "2"]

    bad = cli(
        server,
        "vmss",
        "update",
        "-g",
        group,
        "-n",
        name,
        "--set",
        "upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent=200",
    )
    stderr = failed(bad, "ERROR (InvalidParameter)")
    assert "maxBatchInstancePercent" in stderr

    updated = ok_json(cli(server, "vmss", "update", "-g", group, "-n", name, "--set", "tags.team=blue"))
    assert updated["tags"]["team"] == "blue"
    assert ok_json(cli(server, "vmss", "show", "-g", group, "-n", name))["tags"]["team"] == "blue"

    ok(cli(server, "vmss", "stop", "-g", group, "-n", name, "--instance-ids", "1"))
    states = {iid: power_state(vm) for iid, vm in instances(server, group, name).items()}
    assert states["1"] == "stopped", states
    assert states["0"] == "running", states

    ok(cli(server, "vmss", "start", "-g", group, "-n", name, "--instance-ids", "1"))
    assert power_state(instances(server, group, name)["1"]) == "running"

    addresses = ok_json(cli(server, "vmss", "list-instance-addresses", "-g", group, "-n", name))
    assert [row["instanceId"] for row in addresses] == ["0", "1", "2"]
    assert all(str(row["address"]).startswith("127.") for row in addresses), addresses

    view = ok_json(cli(server, "vmss", "get-instance-view", "-g", group, "-n", name))
    assert "virtualMachine" in view

    # Not a terminal and no --yes: refused as a usage error, nothing deleted.
    failed(cli(server, "group", "delete", "-n", group), "--yes", 2)
    ok(cli(server, "group", "show", "-n", group))

    ok(cli(server, "group", "delete", "-n", group, "--yes"))
    failed(cli(server, "group", "show", "-n", group), "ERROR (ResourceGroupNotFound)")
    failed(cli(server, "vmss", "show", "-g", group, "-n", name), "NotFound")


def test_reader_token_cannot_write(server: Server) -> None:
    label = unique("reader")
    created = ok_json(cli(server, "token", "create", "--role", "reader", "--name", label))
    assert created["role"] == "reader"
    token = ok(cli(server, "token", "create", "--role", "reader", "-o", "table")).strip()
    assert token and " " not in token

    for reader_token in (created["token"], token):
        ok(cli(server, "group", "list", token=reader_token))
        failed(
            cli(server, "group", "create", "-n", unique("clirg"), "-l", LOCATION, token=reader_token),
            "ERROR (AuthorizationFailed)",
        )
    failed(cli(server, "token", "create", "--role", "admin", token=token), "ERROR (AuthorizationFailed)")


def test_errors_and_usage(server: Server) -> None:
    failed(cli(server, "group", "show", "-n", unique("missing")), "ERROR (ResourceGroupNotFound)")
    failed(cli(server, "group", "list", token="not-a-token"), "ERROR (AuthenticationFailed)")
    failed(
        cli(server, "vmss", "create", "-g", "g", "-n", "n", "--image", "a:b:c"),
        "PUBLISHER:OFFER:SKU:VERSION",
        2,
    )
    failed(cli(server, "vmss", "stop", "-g", "g", "-n", "n", "--instance-ids", "x"), "instance id", 2)
    failed(cli(server, "vmss", "list", "--no-such-flag"), "No such option", 2)
    unreachable = cli(server, "--endpoint", "http://127.0.0.1:9", "group", "list")
    failed(unreachable, "ERROR (ConnectionError)")
