"""The guided demo of `scaleset serve --demo`: publish the sample images, make a scale set of real
instances, show that each answers on its own address, and print what to try next.

It drives the server through its public API only, the same way any client does.
"""

from __future__ import annotations

import shutil
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from scaleset.catalog.artifacts import pack_directory

console = Console(stderr=True)
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "images"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
API = "api-version=2026-04-01"
PUBLISHER, OFFER, SKU = "scaleset", "webapp", "stable"


def run_demo_when_ready(endpoint: str, token_path: Path, ca_cert: str | None) -> None:
    try:
        _run_demo(endpoint, token_path, ca_cert)
    except Exception as error:  # the demo is a guide; the server keeps serving whatever happens here
        console.print(f"[red]demo stopped:[/red] {error}")


def _run_demo(endpoint: str, token_path: Path, ca_cert: str | None) -> None:
    token = token_path.read_text().strip()
    client = httpx.Client(
        base_url=endpoint,
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=ca_cert) if ca_cert else True,
        timeout=30,
    )
    _wait_for_health(client)
    for version in ("1.0.0", "1.1.0"):
        _publish(client, version)
    rg = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/demo"
    client.put(f"{rg}?{API}", json={"location": "eastus"}).raise_for_status()
    vmss = f"{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/web"
    body = {
        "location": "eastus",
        "sku": {"name": "Standard_B1s", "capacity": 3},
        "zones": ["1", "2", "3"],
        "properties": {
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {
                        "publisher": PUBLISHER,
                        "offer": OFFER,
                        "sku": SKU,
                        "version": "1.0.0",
                    },
                    "dataDisks": [{"lun": 0, "diskSizeGB": 1, "createOption": "Empty"}],
                },
                "osProfile": {"computerNamePrefix": "web"},
            },
        },
    }
    console.print(
        "[bold]demo[/bold] creating scale set demo/web: 3 instances of scaleset:webapp:stable:1.0.0"
    )
    client.put(f"{vmss}?{API}", json=body).raise_for_status()
    while client.get(f"{vmss}?{API}").json()["properties"]["provisioningState"] not in (
        "Succeeded",
        "Failed",
    ):
        time.sleep(0.5)
    nics = client.get(f"{vmss}/networkInterfaces?{API}").json()["value"]
    for nic in nics:
        address = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
        answer = _wait_for_app(f"http://{address}:8080/")
        console.print(f"  instance {answer.get('instance')} at http://{address}:8080/ answers {answer}")
    # The command as it can be typed in another terminal, venv activated or not.
    cli = shutil.which("scaleset") or str(Path(sys.executable).with_name("scaleset"))
    console.print(
        "[bold]demo ready.[/bold] Try, in another terminal:\n"
        f"  export SCALESET_ENDPOINT={endpoint} SCALESET_TOKEN=$(cat {token_path})\n"
        f"  {cli} vmss list-instances -g demo -n web -o table --expand instanceView\n"
        f"  {cli} vmss scale -g demo -n web --new-capacity 5\n"
        f"  {cli} vmss update -g demo -n web \\\n"
        "      --set virtualMachineProfile.storageProfile.imageReference.version=1.1.0\n"
        f"  {cli} vmss update-instances -g demo -n web --instance-ids '*'\n"
        f"  {cli} vmss reimage -g demo -n web --instance-ids 0\n"
        f"  {cli} vm image list --all -l eastus -p scaleset -o table\n"
        f"  {cli} group delete -n demo --yes      # stops every instance and removes its disks"
    )


def _wait_for_app(url: str) -> dict[str, Any]:
    """Provisioning ends when the instance has booted (as on Azure); its app may need a moment more."""
    for _ in range(100):
        try:
            answer: dict[str, Any] = httpx.get(url, timeout=2).json()
            return answer
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _wait_for_health(client: httpx.Client) -> None:
    for _ in range(100):
        try:
            if client.get("/scaleset/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not come up")


def _publish(client: httpx.Client, version: str) -> None:
    source = EXAMPLES / f"webapp-{version}"
    if not source.is_dir():
        raise RuntimeError(f"the sample image {source} is missing (run the demo from a scaleset checkout)")
    response = client.post(
        "/scaleset/admin/images",
        params={"location": "eastus", "publisher": PUBLISHER, "offer": OFFER, "sku": SKU, "version": version},
        content=pack_directory(source),
        headers={"Content-Type": "application/gzip"},
    )
    if response.status_code not in (201, 409):  # 409: published by an earlier demo run
        response.raise_for_status()
