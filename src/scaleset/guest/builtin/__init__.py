"""The handler packages scaleset ships, to be published as extension versions on first start.

Each directory beside this file is a complete, ordinary handler package (spec/extension-protocol.md §1):
a `HandlerManifest.json` whose commands run `bin/<shim> <verb>`, the files those commands run, and a
`manifest.xml` (`ExtensionImage`: `ProviderNameSpace`, `Type`, `Version`) naming the package, as real
packages carry one. The guest agent drives them exactly like any published package; nothing in them
imports scaleset, because they run inside an instance with its system `python3` (stdlib only) and bash.

- `ApplicationHealthLinux-1.0.0`, `-2.0.0`: Microsoft.ManagedServices.ApplicationHealthLinux, binary
  (1.0) and rich (2.0) health states. Both carry the same `bin/apphealth.py`; it picks its behaviour
  from its package's manifest.xml. `SCALESET_APPHEALTH_TIME_SCALE` (float, default 1) divides its
  intervals, grace period and probe timeout, for tests.
- `CustomScript-2.1.0`: Microsoft.Azure.Extensions.CustomScript in the style of 2.x (`bin/custom-script.py`).

`builtin_packages()` reads the names from those manifests, so a package's identity lives in one place.
Copy a package with `BuiltinPackage.assemble`, which leaves out bytecode caches (tests import the
programs by path) and fills in a derived package (`based-on`) from its base.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent
HANDLER_MANIFEST = "HandlerManifest.json"
PACKAGE_MANIFEST = "manifest.xml"
# A package directory holding this file is assembled from the package it names plus its own files
# (ApplicationHealthLinux 1.0.0 is 2.0.0's program with its own manifest.xml): one copy of the code.
BASED_ON = "based-on"


@dataclass(frozen=True)
class BuiltinPackage:
    """One shipped handler package: `path` is its directory (HandlerManifest.json at its root)."""

    publisher: str
    type: str
    version: str
    path: Path

    @property
    def handler_name(self) -> str:
        """`Publisher.Type`, the name the agent gives the handler's directory and log folder."""
        return f"{self.publisher}.{self.type}"

    def assemble(self, target: Path) -> Path:
        """Lay the complete package out at `target` (which must not exist): its base package's files if
        it has one, then its own; without bytecode caches. Returns `target`."""
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", BASED_ON)
        base = self.path / BASED_ON
        if base.is_file():
            shutil.copytree(BUILTIN_DIR / base.read_text().strip(), target, ignore=ignore)
            shutil.copytree(self.path, target, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copytree(self.path, target, ignore=ignore)
        return target


def read_package(path: Path) -> BuiltinPackage:
    """Read a package directory's manifest.xml; its directory must be named `<Type>-<Version>`."""
    root = ElementTree.parse(path / PACKAGE_MANIFEST).getroot()
    # Real manifests put the elements in a namespace; compare local names only.
    fields = {element.tag.rsplit("}", 1)[-1]: (element.text or "").strip() for element in root}
    missing = [name for name in ("ProviderNameSpace", "Type", "Version") if not fields.get(name)]
    if missing:
        raise ValueError(f"{path / PACKAGE_MANIFEST} lacks {', '.join(missing)}")
    package = BuiltinPackage(fields["ProviderNameSpace"], fields["Type"], fields["Version"], path)
    if path.name != f"{package.type}-{package.version}":
        raise ValueError(
            f"{path} holds {package.type} {package.version}; name it {package.type}-{package.version}"
        )
    return package


def builtin_packages() -> list[BuiltinPackage]:
    """Every shipped package, sorted by directory name."""
    directories = sorted(
        child
        for child in BUILTIN_DIR.iterdir()
        if (child / HANDLER_MANIFEST).is_file() or (child / BASED_ON).is_file()
    )
    return [read_package(directory) for directory in directories]
