"""`scaleset vm image ...` (the platform image catalog, read side) and `scaleset image publish`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from scaleset.cli.client import ApiClient, CliError, json_body, segment
from scaleset.cli.commands_common import client, emit, usage_error
from scaleset.cli.output import col
from scaleset.cli.paths import ImageUrn, parse_urn, version_key

vm_app = typer.Typer(
    name="vm", help="Virtual machines, their extensions, availability sets and images.", no_args_is_help=True
)
vm_image_app = typer.Typer(name="image", help="Browse the platform image catalog.", no_args_is_help=True)
vm_app.add_typer(vm_image_app, name="image")

image_app = typer.Typer(name="image", help="Publish image versions (admin).", no_args_is_help=True)

IMAGE_LIST_COLUMNS = [
    col("Publisher", "publisher"),
    col("Offer", "offer"),
    col("Sku", "sku"),
    col("Version", "version"),
    col("Urn", "urn"),
    col("Architecture", "architecture"),
]

IMAGE_COLUMNS = [
    col("Name", "name"),
    col("Location", "location"),
    col("OsType", "properties", "osDiskImage", "operatingSystem"),
    col(
        "AutomaticOSUpgradeSupported",
        "properties",
        "automaticOSUpgradeProperties",
        "automaticOSUpgradeSupported",
    ),
    col("Architecture", "properties", "architecture"),
]

LocationOption = Annotated[
    str | None,
    typer.Option(
        "--location", "-l", envvar="SCALESET_LOCATION", help="Location, e.g. eastus.", show_default=False
    ),
]

ARCHIVE_TYPES = (
    (".tar.gz", "application/gzip"),
    (".tgz", "application/gzip"),
    (".tar", "application/x-tar"),
    (".zip", "application/zip"),
)


def _require_location(location: str | None) -> str:
    if not location:
        raise usage_error("a location is required (or set SCALESET_LOCATION)", "--location")
    return location


class Catalog:
    """The VirtualMachineImages paths of one location."""

    def __init__(self, api: ApiClient, location: str) -> None:
        self.api = api
        self.base = api.location_path(location, "publishers")

    def _names(self, path: str, params: dict[str, str] | None = None) -> list[Any]:
        body = self.api.get(path, params)
        return body if isinstance(body, list) else (body or {}).get("value") or []

    def publishers(self) -> list[str]:
        return _names_of(self._names(self.base))

    def offers(self, publisher: str) -> list[str]:
        return _names_of(self._names(f"{self.base}/{segment(publisher)}/artifacttypes/vmimage/offers"))

    def skus(self, publisher: str, offer: str) -> list[str]:
        path = f"{self.base}/{segment(publisher)}/artifacttypes/vmimage/offers/{segment(offer)}/skus"
        return _names_of(self._names(path))

    def versions(self, publisher: str, offer: str, sku: str, *, with_properties: bool = False) -> list[Any]:
        # `$expand=properties` is ARM's ListWithProperties: each version with its architecture.
        params = {"$expand": "properties"} if with_properties else None
        return self._names(self._versions_path(publisher, offer, sku), params)

    def version(self, urn: ImageUrn) -> Any:
        path = f"{self._versions_path(urn.publisher, urn.offer, urn.sku)}/{segment(urn.version)}"
        return self.api.get(path)

    def _versions_path(self, publisher: str, offer: str, sku: str) -> str:
        return (
            f"{self.base}/{segment(publisher)}/artifacttypes/vmimage/offers/{segment(offer)}"
            f"/skus/{segment(sku)}/versions"
        )


def _names_of(items: list[Any]) -> list[str]:
    return [str(item["name"]) for item in items if isinstance(item, dict) and item.get("name")]


def matches(name: str, wanted: str | None) -> bool:
    """az's partial match: a case-insensitive substring."""
    return wanted is None or wanted.lower() in name.lower()


def latest_version(versions: list[str]) -> str | None:
    return max(versions, key=version_key) if versions else None


@vm_image_app.command("list")
def list_images(
    ctx: typer.Context,
    location: LocationOption = None,
    publisher: Annotated[
        str | None, typer.Option("--publisher", "-p", help="Publisher (partial match).")
    ] = None,
    offer: Annotated[str | None, typer.Option("--offer", "-f", help="Offer (partial match).")] = None,
    sku: Annotated[str | None, typer.Option("--sku", "-s", help="SKU (partial match).")] = None,
    all_versions: Annotated[
        bool, typer.Option("--all", help="List every version, not only the latest.")
    ] = False,
) -> None:
    """List platform images: publishers → offers → SKUs → versions, filtered by partial names.

    Unlike az there is no offline alias list: the server is always asked. Without --all only the
    latest version of each SKU is listed.
    """
    catalog = Catalog(client(ctx), _require_location(location))
    items: list[dict[str, Any]] = []
    for pub in sorted(p for p in catalog.publishers() if matches(p, publisher)):
        for off in sorted(o for o in catalog.offers(pub) if matches(o, offer)):
            for sk in sorted(s for s in catalog.skus(pub, off) if matches(s, sku)):
                found = {
                    str(v["name"]): v
                    for v in catalog.versions(pub, off, sk, with_properties=True)
                    if isinstance(v, dict) and v.get("name")
                }
                names = sorted(found, key=version_key)
                if not all_versions:
                    names = names[-1:]
                items.extend(_image_item(pub, off, sk, name, found[name]) for name in names)
    emit(ctx, items, IMAGE_LIST_COLUMNS)


def _image_item(
    publisher: str, offer: str, sku: str, version: str, resource: dict[str, Any]
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "publisher": publisher,
        "offer": offer,
        "sku": sku,
        "version": version,
        "urn": f"{publisher}:{offer}:{sku}:{version}",
    }
    properties = resource.get("properties")
    architecture = properties.get("architecture") if isinstance(properties, dict) else None
    if architecture:
        item["architecture"] = architecture
    return item


@vm_image_app.command("show")
def show_image(
    ctx: typer.Context,
    location: LocationOption = None,
    urn: Annotated[
        str | None, typer.Option("--urn", help="PUBLISHER:OFFER:SKU:VERSION (VERSION may be latest).")
    ] = None,
    publisher: Annotated[str | None, typer.Option("--publisher", "-p")] = None,
    offer: Annotated[str | None, typer.Option("--offer", "-f")] = None,
    sku: Annotated[str | None, typer.Option("--sku", "-s")] = None,
    version: Annotated[str | None, typer.Option("--version")] = None,
) -> None:
    """Show one image version (with its automatic OS upgrade support)."""
    try:
        if urn is not None:
            image = parse_urn(urn)
        elif publisher and offer and sku and version:
            image = ImageUrn(publisher, offer, sku, version)
        else:
            raise ValueError("give --urn, or all of --publisher, --offer, --sku and --version")
    except ValueError as exc:
        raise usage_error(str(exc), "--urn") from exc
    catalog = Catalog(client(ctx), _require_location(location))
    if image.version.lower() == "latest":
        names = _names_of(catalog.versions(image.publisher, image.offer, image.sku))
        newest = latest_version(names)
        if newest is None:
            raise CliError("ImageNotFound", f"no versions of {image.publisher}:{image.offer}:{image.sku}")
        image = ImageUrn(image.publisher, image.offer, image.sku, newest)
    emit(ctx, catalog.version(image), IMAGE_COLUMNS)


def content_type_for(path: Path) -> str:
    """The Content-Type to send an image archive with, from its name."""
    name = path.name.lower()
    for suffix, content_type in ARCHIVE_TYPES:
        if name.endswith(suffix):
            return content_type
    raise usage_error(f"{path} is not a directory, .tar, .tar.gz, .tgz or .zip", "PATH")


def read_artifact(path: Path) -> tuple[bytes, str]:
    """The bytes to upload and their Content-Type: a directory is packed here, an archive goes as is."""
    if path.is_dir():
        from scaleset.catalog.artifacts import ArtifactError, pack_directory

        try:
            return pack_directory(path), "application/gzip"
        except ArtifactError as exc:
            raise CliError("InvalidArtifact", exc.message, target=exc.member) from exc
    content_type = content_type_for(path)
    try:
        return path.read_bytes(), content_type
    except OSError as exc:
        raise usage_error(f"cannot read {path}: {exc.strerror or exc}", "PATH") from exc


@image_app.command("publish")
def publish(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True, help="A directory, or a .tar, .tar.gz, .tgz or .zip of one.", show_default=False
        ),
    ],
    location: Annotated[str, typer.Option("--location", "-l", help="Location to file the image under.")],
    publisher: Annotated[str, typer.Option("--publisher", "-p")],
    offer: Annotated[str, typer.Option("--offer", "-f")],
    sku: Annotated[str, typer.Option("--sku", "-s")],
    version: Annotated[str, typer.Option("--version", help="Version, e.g. 1.0.0.")],
) -> None:
    """Publish an image version (needs an admin token): a directory or a .tar/.tar.gz/.zip with a
    scaleset-image.json manifest. New scale sets and scale-outs on `latest` use it."""
    content, content_type = read_artifact(path)
    params = {"location": location, "publisher": publisher, "offer": offer, "sku": sku, "version": version}
    api = client(ctx)
    response = api.request(
        "POST",
        "/scaleset/admin/images",
        params=params,
        content=content,
        headers={"Content-Type": content_type},
        timeout=600.0,
    )
    emit(ctx, json_body(response), IMAGE_COLUMNS)
