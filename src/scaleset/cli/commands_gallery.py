"""`scaleset sig ...`: Azure Compute Gallery galleries, image definitions and image versions, with az's
command and flag names (`az sig`, `az sig image-definition`, `az sig image-version`).

A version is published from an artifact, as `scaleset image publish` publishes a platform image:
`scaleset sig image-version create ... --artifact DIR` packs the directory (or sends the archive) as the body
of `PUT .../galleries/{g}/images/{i}/versions/{v}?targetRegions=...&excludeFromLatest=...`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from scaleset.cli.client import ApiClient, json_body
from scaleset.cli.commands_common import GroupOption, client, emit, group_location, usage_error
from scaleset.cli.commands_image import read_artifact
from scaleset.cli.commands_vmss import resource_group_of
from scaleset.cli.output import Column, col
from scaleset.cli.paths import parse_tags

app = typer.Typer(
    name="sig",
    help="Manage Azure Compute Galleries: galleries, image definitions and image versions.",
    no_args_is_help=True,
)
definition_app = typer.Typer(
    name="image-definition", help="Manage gallery image definitions.", no_args_is_help=True
)
version_app = typer.Typer(
    name="image-version", help="Publish and manage gallery image versions.", no_args_is_help=True
)
app.add_typer(definition_app, name="image-definition")
app.add_typer(version_app, name="image-version")

GALLERY_COLUMNS = [
    col("Name", "name"),
    Column("ResourceGroup", resource_group_of),
    col("Location", "location"),
    col("UniqueName", "properties", "identifier", "uniqueName"),
    col("ProvisioningState", "properties", "provisioningState"),
]
DEFINITION_COLUMNS = [
    col("Name", "name"),
    Column("ResourceGroup", resource_group_of),
    col("Location", "location"),
    col("OsType", "properties", "osType"),
    col("OsState", "properties", "osState"),
    col("HyperVGeneration", "properties", "hyperVGeneration"),
    col("Publisher", "properties", "identifier", "publisher"),
    col("Offer", "properties", "identifier", "offer"),
    col("Sku", "properties", "identifier", "sku"),
]


def _regions_of(version: Any) -> str:
    regions = ((version.get("properties") or {}).get("publishingProfile") or {}).get("targetRegions") or []
    return " ".join(str(region.get("name")) for region in regions if isinstance(region, dict))


VERSION_COLUMNS = [
    col("Name", "name"),
    Column("ResourceGroup", resource_group_of),
    Column("TargetRegions", _regions_of),
    col("ExcludeFromLatest", "properties", "publishingProfile", "excludeFromLatest"),
    col("PublishedDate", "properties", "publishingProfile", "publishedDate"),
    col("ProvisioningState", "properties", "provisioningState"),
]

GalleryOption = Annotated[
    str, typer.Option("--gallery-name", "-r", help="Name of the gallery.", show_default=False)
]
DefinitionOption = Annotated[
    str,
    typer.Option(
        "--gallery-image-definition", "-i", help="Name of the image definition.", show_default=False
    ),
]
VersionOption = Annotated[
    str,
    typer.Option(
        "--gallery-image-version", "-e", help="Version, Major.Minor.Patch (e.g. 1.0.0).", show_default=False
    ),
]
LocationOption = Annotated[
    str | None, typer.Option("--location", "-l", help="Location; defaults to the resource group's.")
]
TagsOption = Annotated[list[str] | None, typer.Option("--tags", help="Tags: key=value. Repeatable.")]


def gallery_path(api: ApiClient, group: str, *parts: str) -> str:
    """`.../resourceGroups/{group}/providers/Microsoft.Compute/galleries/<parts>`."""
    return api.compute_path(group, "galleries", *parts)


def _tags(tags: list[str] | None) -> dict[str, str]:
    try:
        return parse_tags(tags or [])
    except ValueError as exc:
        raise usage_error(str(exc), "--tags") from exc


# --- galleries --------------------------------------------------------------------------------------
@app.command("create")
def create_gallery(
    ctx: typer.Context,
    group: GroupOption,
    gallery: GalleryOption,
    location: LocationOption = None,
    description: Annotated[str | None, typer.Option("--description", help="A description.")] = None,
    tags: TagsOption = None,
) -> None:
    """Create a gallery (or update its description and tags)."""
    api = client(ctx)
    properties = {"description": description} if description else {}
    body = {"location": location or group_location(api, group), "tags": _tags(tags), "properties": properties}
    emit(ctx, api.begin("PUT", gallery_path(api, group, gallery), body), GALLERY_COLUMNS)


@app.command("show")
def show_gallery(ctx: typer.Context, group: GroupOption, gallery: GalleryOption) -> None:
    """Show a gallery."""
    api = client(ctx)
    emit(ctx, api.get(gallery_path(api, group, gallery)), GALLERY_COLUMNS)


@app.command("list")
def list_galleries(
    ctx: typer.Context,
    group: Annotated[
        str | None, typer.Option("--resource-group", "-g", help="Only this resource group's galleries.")
    ] = None,
) -> None:
    """List the galleries of the subscription, or of one resource group."""
    api = client(ctx)
    path = (
        gallery_path(api, group)
        if group
        else f"{api.subscription_path}/providers/Microsoft.Compute/galleries"
    )
    emit(ctx, api.get_pages(path), GALLERY_COLUMNS)


@app.command("delete")
def delete_gallery(ctx: typer.Context, group: GroupOption, gallery: GalleryOption) -> None:
    """Delete a gallery (refused while it holds image definitions)."""
    api = client(ctx)
    api.begin("DELETE", gallery_path(api, group, gallery))


# --- image definitions --------------------------------------------------------------------------------
@definition_app.command("create")
def create_definition(
    ctx: typer.Context,
    group: GroupOption,
    gallery: GalleryOption,
    definition: DefinitionOption,
    publisher: Annotated[str, typer.Option("--publisher", help="The definition's publisher name.")],
    offer: Annotated[str, typer.Option("--offer", help="The definition's offer name.")],
    sku: Annotated[str, typer.Option("--sku", help="The definition's SKU name.")],
    os_type: Annotated[str, typer.Option("--os-type", help="Linux or Windows.")] = "Linux",
    os_state: Annotated[str, typer.Option("--os-state", help="Generalized or Specialized.")] = "Generalized",
    hyper_v_generation: Annotated[str, typer.Option("--hyper-v-generation", help="V1 or V2.")] = "V1",
    architecture: Annotated[str | None, typer.Option("--architecture", help="x64 or Arm64.")] = None,
    description: Annotated[str | None, typer.Option("--description", help="A description.")] = None,
    location: LocationOption = None,
    tags: TagsOption = None,
) -> None:
    """Create an image definition in a gallery (its location defaults to the gallery's)."""
    api = client(ctx)
    if location is None:
        location = str((api.get(gallery_path(api, group, gallery)) or {}).get("location") or "")
    properties: dict[str, Any] = {
        "osType": os_type,
        "osState": os_state,
        "hyperVGeneration": hyper_v_generation,
        "identifier": {"publisher": publisher, "offer": offer, "sku": sku},
    }
    if architecture:
        properties["architecture"] = architecture
    if description:
        properties["description"] = description
    body = {"location": location, "tags": _tags(tags), "properties": properties}
    path = gallery_path(api, group, gallery, "images", definition)
    emit(ctx, api.begin("PUT", path, body), DEFINITION_COLUMNS)


@definition_app.command("show")
def show_definition(
    ctx: typer.Context, group: GroupOption, gallery: GalleryOption, definition: DefinitionOption
) -> None:
    """Show an image definition."""
    api = client(ctx)
    emit(ctx, api.get(gallery_path(api, group, gallery, "images", definition)), DEFINITION_COLUMNS)


@definition_app.command("list")
def list_definitions(ctx: typer.Context, group: GroupOption, gallery: GalleryOption) -> None:
    """List the image definitions of a gallery."""
    api = client(ctx)
    emit(ctx, api.get_pages(gallery_path(api, group, gallery, "images")), DEFINITION_COLUMNS)


@definition_app.command("delete")
def delete_definition(
    ctx: typer.Context, group: GroupOption, gallery: GalleryOption, definition: DefinitionOption
) -> None:
    """Delete an image definition (refused while it has versions)."""
    api = client(ctx)
    api.begin("DELETE", gallery_path(api, group, gallery, "images", definition))


# --- image versions -----------------------------------------------------------------------------------
def target_regions_of(given: list[str] | None, extra: list[str]) -> list[str]:
    """az's `--target-regions eastus westus` (space-separated) or repeated/comma-separated forms.
    az's `region=replicas[=storage]` suffixes are accepted and ignored (one replica per region here)."""
    names = [part for value in [*(given or []), *extra] for part in value.replace(",", " ").split()]
    return [name.split("=")[0] for name in names]


@version_app.command("create", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def create_version(
    ctx: typer.Context,
    group: GroupOption,
    gallery: GalleryOption,
    definition: DefinitionOption,
    version: VersionOption,
    artifact: Annotated[
        Path,
        typer.Option(
            "--artifact",
            exists=True,
            help="The image: a directory with a scaleset-image.json manifest, or a .tar/.tar.gz/.zip of one.",
            show_default=False,
        ),
    ],
    target_regions: Annotated[
        list[str] | None,
        typer.Option(
            "--target-regions",
            help="Regions to replicate to (space- or comma-separated); default: the definition's location.",
        ),
    ] = None,
    exclude_from_latest: Annotated[
        bool,
        typer.Option(
            "--exclude-from-latest", help="Never pick this version for an image id without a version."
        ),
    ] = False,
    tags: TagsOption = None,
) -> None:
    """Publish an image version from an artifact. Versions are immutable; scale sets whose image id has no
    /versions/... get it as their latest, and automatic OS upgrades start on those that opted in."""
    if ctx.args and not target_regions:
        raise usage_error(f"unexpected arguments: {' '.join(ctx.args)}", "--target-regions")
    content, content_type = read_artifact(artifact)
    params: dict[str, str] = {}
    regions = target_regions_of(target_regions, list(ctx.args))
    if regions:
        params["targetRegions"] = ",".join(regions)
    if exclude_from_latest:
        params["excludeFromLatest"] = "true"
    tag_map = _tags(tags)
    if tag_map:
        params["tags"] = json.dumps(tag_map)
    api = client(ctx)
    response = api.request(
        "PUT",
        gallery_path(api, group, gallery, "images", definition, "versions", version),
        params=params,
        content=content,
        headers={"Content-Type": content_type},
        timeout=600.0,
    )
    emit(ctx, json_body(response), VERSION_COLUMNS)


@version_app.command("show")
def show_version(
    ctx: typer.Context,
    group: GroupOption,
    gallery: GalleryOption,
    definition: DefinitionOption,
    version: VersionOption,
) -> None:
    """Show an image version."""
    api = client(ctx)
    path = gallery_path(api, group, gallery, "images", definition, "versions", version)
    emit(ctx, api.get(path), VERSION_COLUMNS)


@version_app.command("list")
def list_versions(
    ctx: typer.Context, group: GroupOption, gallery: GalleryOption, definition: DefinitionOption
) -> None:
    """List the versions of an image definition, oldest first."""
    api = client(ctx)
    path = gallery_path(api, group, gallery, "images", definition, "versions")
    emit(ctx, api.get_pages(path), VERSION_COLUMNS)


@version_app.command("delete")
def delete_version(
    ctx: typer.Context,
    group: GroupOption,
    gallery: GalleryOption,
    definition: DefinitionOption,
    version: VersionOption,
) -> None:
    """Delete an image version (refused while a scale set or VM runs it)."""
    api = client(ctx)
    api.begin("DELETE", gallery_path(api, group, gallery, "images", definition, "versions", version))
