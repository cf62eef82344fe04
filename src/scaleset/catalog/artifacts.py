"""Installing published artifacts (image versions now, extension packages later) without trusting them.

An artifact is a directory, a tar (optionally gzipped) or a zip. Whatever its shape, installing it
never writes outside its target and never leaves a half-installed target behind:

- members are written one by one by this module, never by `tarfile.extractall`/`ZipFile.extractall`;
- a member name may not be absolute, contain `..`, a NUL or a backslash, and may not pass through a
  symlink member (every parent must be a real directory this module created);
- a symlink is kept only when its target stays inside the artifact, judged without following links
  (see `_check_symlink_target`); a hard link must point at a regular file already written;
- device files, FIFOs, sockets and unknown member types are refused;
- total size and member count are capped while streaming, so a compression bomb stops early;
- everything is written into a temporary sibling of the target and renamed into place at the end,
  and that sibling is removed on any error.

Permission bits are kept (so executables stay executable) minus setuid/setgid/sticky; the owner can
always read a file and read/write/search a directory, so the control plane can copy and delete what it
installed. Ownership is never copied: files belong to whoever runs scaleset.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

DEFAULT_MAX_BYTES = 512 * 2**20
DEFAULT_MAX_MEMBERS = 20_000

_CHUNK = 2**20
_MAX_SYMLINK_TARGET = 4095  # PATH_MAX - 1
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_DIR_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Room for tar headers (including long names) on top of file data, for the raw-stream backstop below.
_TAR_HEADER_ALLOWANCE = 8192


class ArtifactError(Exception):
    """A refused artifact; `member` is the offending member's name as the artifact spells it, if any."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message, member)
        self.message = message
        self.member = member

    def __str__(self) -> str:
        return f"{self.member!r}: {self.message}" if self.member is not None else self.message


# ---------------------------------------------------------------------------------------------------
# Public entry points


def install_artifact(
    source: Path,
    target: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Install `source` at `target`: a directory is copied, a file is unpacked as an archive."""
    if source.is_dir():
        copy_directory_artifact(source, target, max_bytes=max_bytes, max_members=max_members)
    elif source.is_file():
        unpack_archive(source, target, max_bytes=max_bytes, max_members=max_members)
    elif not source.exists():
        raise FileNotFoundError(f"no artifact at {source}")
    else:
        raise ArtifactError(f"{source} is neither a directory nor an archive file")


def unpack_archive(
    archive: Path,
    target: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Unpack a `.tar`, `.tar.gz`/`.tgz` or `.zip` (recognised by content) into a new directory `target`.

    Raises ArtifactError when the archive is refused, FileExistsError when `target` exists; on any
    error nothing is left at `target` or beside it.
    """
    kind = _archive_kind(archive)
    with _staging_directory(target) as root:
        writer = _Writer(_Tree(_Budget(max_bytes, max_members)), root)
        if kind == "zip":
            _unpack_zip(archive, writer)
        else:
            _unpack_tar(archive, gzipped=kind == "tar.gz", writer=writer)
        writer.finish()


def copy_directory_artifact(
    source: Path,
    target: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Copy a published directory to a new directory `target` under the same rules as an archive."""
    if not source.is_dir():
        raise ArtifactError(f"{source} is not a directory")
    if _is_within(target, source):
        raise ValueError(f"cannot copy {source} into itself ({target})")
    with _staging_directory(target) as root:
        writer = _Writer(_Tree(_Budget(max_bytes, max_members)), root)
        for entry in _scan_directory(source):
            _copy_entry(entry, writer)
        writer.finish()


def pack_directory(
    source: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> bytes:
    """A deterministic `.tar.gz` of the contents of `source` (member names relative to it).

    The same directory always gives the same bytes: members sorted, mtime 0, uid/gid 0, no user or
    group names, no gzip timestamp or file name. The directory is checked by the same rules as an
    upload first, so a hostile directory is refused here rather than by the server.
    """
    if not source.is_dir():
        raise ArtifactError(f"{source} is not a directory")
    tree = _Tree(_Budget(max_bytes, max_members))
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as compressed,
        tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in _scan_directory(source):
            _pack_entry(entry, tree, tar)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# Names and link targets


def _member_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name; `()` is the artifact's root."""
    if "\x00" in name:
        raise ArtifactError("member name contains a NUL byte", name)
    if "\\" in name:
        # On Linux a backslash is an ordinary character, elsewhere a separator: refuse the ambiguity.
        raise ArtifactError("member name contains a backslash; separate path components with '/'", name)
    if name.startswith("/"):
        raise ArtifactError("member has an absolute path", name)
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ArtifactError("member path contains a '..' component", name)
    return parts


def _check_symlink_target(member: str, parts: tuple[str, ...], link_target: str) -> None:
    """Refuse a symlink whose target could lead outside the artifact.

    The check is lexical and ignores what exists, so members may come in any order. It is exact
    because `..` is allowed only at the start of a target: a link's parents are real directories
    (nothing is written through a symlink), so climbing from the link's own directory is just
    dropping path components. A `..` after a name would climb out of whatever that name resolves to,
    which may be another symlink, so `sub/../x` is refused even when it would happen to be harmless.
    Everything after the leading `..`s descends by name, and by induction every link it meets lands
    inside the artifact too.
    """
    if not link_target:
        raise ArtifactError("symlink has an empty target", member)
    if "\x00" in link_target:
        raise ArtifactError("symlink target contains a NUL byte", member)
    if len(link_target) > _MAX_SYMLINK_TARGET:
        raise ArtifactError("symlink target is too long", member)
    if link_target.startswith("/"):
        raise ArtifactError(f"symlink target {link_target!r} is absolute", member)
    steps = [step for step in link_target.split("/") if step not in ("", ".")]
    climbs = next((index for index, step in enumerate(steps) if step != ".."), len(steps))
    if ".." in steps[climbs:]:
        raise ArtifactError(f"symlink target {link_target!r} may use '..' only at its start", member)
    if climbs > len(parts) - 1:
        raise ArtifactError(f"symlink target {link_target!r} points outside the artifact", member)


# ---------------------------------------------------------------------------------------------------
# The model of what has been written: every check that does not need the filesystem


class _Node(enum.Enum):
    DIRECTORY = "directory"
    FILE = "file"
    SYMLINK = "symlink"


class _Budget:
    """Member count and byte total, checked as members and bytes arrive."""

    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.members = 0
        self.bytes = 0

    def add_member(self, member: str) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ArtifactError(f"the artifact has more than {self.max_members} members", member)

    def check_room(self, count: int, member: str) -> None:
        """Refuse early when a member's declared size alone would break the limit."""
        if self.bytes + count > self.max_bytes:
            raise ArtifactError(f"the artifact unpacks to more than {self.max_bytes} bytes", member)

    def add_bytes(self, count: int, member: str) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise ArtifactError(f"the artifact unpacks to more than {self.max_bytes} bytes", member)


class _Tree:
    """What an artifact has put where so far, and the rules for the next member.

    `claim_*` checks a member and records it; it returns the parent directories that do not exist
    yet (archives often leave out directory entries), which the caller creates.
    """

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget
        self.nodes: dict[tuple[str, ...], _Node] = {(): _Node.DIRECTORY}

    def claim_directory(self, member: str, parts: tuple[str, ...]) -> list[tuple[str, ...]]:
        self.budget.add_member(member)
        missing = self._missing_parents(member, parts)
        existing = self.nodes.get(parts)
        if existing is _Node.DIRECTORY:
            return missing  # a repeated directory entry only restates the directory
        if existing is not None:
            raise ArtifactError(f"member is a directory but an earlier {existing.value} has its name", member)
        self._record(missing, parts, _Node.DIRECTORY)
        return missing

    def claim(self, member: str, parts: tuple[str, ...], node: _Node) -> list[tuple[str, ...]]:
        """Claim a file or symlink, which may not replace anything already written."""
        self.budget.add_member(member)
        if not parts:
            raise ArtifactError(f"a {node.value} cannot be the artifact's root", member)
        missing = self._missing_parents(member, parts)
        if parts in self.nodes:
            raise ArtifactError(f"member appears twice (earlier as a {self.nodes[parts].value})", member)
        self._record(missing, parts, node)
        return missing

    def check_hardlink_source(self, member: str, source: tuple[str, ...], source_name: str) -> None:
        if self.nodes.get(source) is not _Node.FILE:
            message = f"hard link to {source_name!r}, which is not a regular file earlier in the artifact"
            raise ArtifactError(message, member)

    def _missing_parents(self, member: str, parts: tuple[str, ...]) -> list[tuple[str, ...]]:
        missing = []
        for depth in range(1, len(parts)):
            parent = parts[:depth]
            node = self.nodes.get(parent)
            if node is None:
                missing.append(parent)
            elif node is not _Node.DIRECTORY:
                shown = "/".join(parent)
                raise ArtifactError(f"member would be written through {shown!r}, a {node.value}", member)
        return missing

    def _record(self, missing: list[tuple[str, ...]], parts: tuple[str, ...], node: _Node) -> None:
        for parent in missing:
            self.nodes[parent] = _Node.DIRECTORY
        self.nodes[parts] = node


# ---------------------------------------------------------------------------------------------------
# Writing: the tree's checks first, then the filesystem with O_NOFOLLOW as a second line of defence


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _file_mode(mode: int) -> int:
    return (mode & 0o777) | 0o400


def _directory_mode(mode: int) -> int:
    return (mode & 0o777) | 0o700


class _Writer:
    """Writes members under a root directory, never following a symlink on the way."""

    def __init__(self, tree: _Tree, root: Path) -> None:
        self.tree = tree
        self.root = root
        self.directory_modes: dict[tuple[str, ...], int] = {(): 0o755}

    def directory(self, member: str, mode: int) -> None:
        parts = _member_parts(member)
        for parent in self.tree.claim_directory(member, parts):
            self._make_directory(member, parent)
        if parts not in self.directory_modes:
            self._make_directory(member, parts)
        self.directory_modes[parts] = _directory_mode(mode)

    def file(self, member: str, mode: int, content: _Readable, declared_size: int) -> None:
        parts = self._prepare(member, _member_parts(member), _Node.FILE)
        self.tree.budget.check_room(declared_size, member)
        with self._parent(member, parts) as parent, _os_errors(member):
            descriptor = os.open(parts[-1], _FILE_CREATE_FLAGS, 0o600, dir_fd=parent)
            with open(descriptor, "wb") as output:
                while chunk := content.read(_CHUNK):
                    self.tree.budget.add_bytes(len(chunk), member)
                    output.write(chunk)
                os.fchmod(output.fileno(), _file_mode(mode))

    def symlink(self, member: str, link_target: str) -> None:
        parts = _member_parts(member)
        _check_symlink_target(member, parts, link_target)
        self._prepare(member, parts, _Node.SYMLINK)
        with self._parent(member, parts) as parent, _os_errors(member):
            os.symlink(link_target, parts[-1], dir_fd=parent)

    def hardlink(self, member: str, source_name: str) -> None:
        try:
            source = _member_parts(source_name)
        except ArtifactError as exc:  # the link is at fault, so the error names the link
            raise ArtifactError(f"hard link target {source_name!r}: {exc.message}", member) from None
        self.tree.check_hardlink_source(member, source, source_name)
        parts = self._prepare(member, _member_parts(member), _Node.FILE)
        with (
            self._parent(member, source) as source_parent,
            self._parent(member, parts) as parent,
            _os_errors(member),
        ):
            os.link(
                source[-1],
                parts[-1],
                src_dir_fd=source_parent,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )

    def finish(self) -> None:
        """Apply directory modes last, deepest first, as writing needed the owner's bits."""
        for parts in sorted(self.directory_modes, key=len, reverse=True):
            with self._open_directory(parts) as descriptor:
                os.fchmod(descriptor, self.directory_modes[parts])

    def _prepare(self, member: str, parts: tuple[str, ...], node: _Node) -> tuple[str, ...]:
        for parent in self.tree.claim(member, parts, node):
            self._make_directory(member, parent)
        return parts

    def _make_directory(self, member: str, parts: tuple[str, ...]) -> None:
        with self._parent(member, parts) as parent, _os_errors(member):
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
        self.directory_modes.setdefault(parts, 0o755)

    @contextlib.contextmanager
    def _parent(self, member: str, parts: tuple[str, ...]) -> Iterator[int]:
        with _os_errors(member), self._open_directory(parts[:-1]) as descriptor:
            yield descriptor

    @contextlib.contextmanager
    def _open_directory(self, parts: tuple[str, ...]) -> Iterator[int]:
        descriptor = os.open(self.root, _DIR_OPEN_FLAGS)
        try:
            for part in parts:
                child = os.open(part, _DIR_OPEN_FLAGS, dir_fd=descriptor)
                os.close(descriptor)
                descriptor = child
            yield descriptor
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def _os_errors(member: str) -> Iterator[None]:
    """Errors the member itself causes become ArtifactErrors; others (disk full…) stay OSErrors."""
    try:
        yield
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise ArtifactError(f"cannot write member: {exc.strerror}", member) from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            raise ArtifactError(f"cannot write member: {exc.strerror}", member) from exc
        raise


@contextlib.contextmanager
def _staging_directory(target: Path) -> Iterator[Path]:
    """A temporary sibling of `target`, renamed to `target` on success and removed on any error."""
    if os.path.lexists(target):
        raise FileExistsError(f"{target} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        if os.path.lexists(target):
            raise FileExistsError(f"{target} appeared while the artifact was being installed")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------------
# Archives


def _archive_kind(archive: Path) -> str:
    with archive.open("rb") as stream:
        head = stream.read(4)
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return "tar.gz"
    if tarfile.is_tarfile(archive):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    raise ArtifactError(f"{archive.name} is not a tar, tar.gz or zip archive")


class _CappedStream(io.RawIOBase):
    """The decompressed tar stream, cut off past what `max_bytes` of content could need.

    Counting file content catches ordinary bombs; this catches a bomb hidden in tar headers (a
    multi-gigabyte pax header would otherwise be read into memory before any member appears).
    """

    def __init__(self, raw: _Readable, budget: _Budget, current: list[str]) -> None:
        super().__init__()
        self.raw = raw
        self.limit = budget.max_bytes + (budget.max_members + 2) * _TAR_HEADER_ALLOWANCE
        self.consumed = 0
        self.current = current

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        # Ask for one byte past the limit at most, so crossing it is seen without reading further.
        data = self.raw.read(min(len(view), self.limit - self.consumed + 1))
        self.consumed += len(data)
        if self.consumed > self.limit:
            member = self.current[-1] if self.current else None
            raise ArtifactError("the archive's tar stream is larger than its limits allow", member)
        view[: len(data)] = data
        return len(data)


_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError, UnicodeError)


def _unpack_tar(archive: Path, *, gzipped: bool, writer: _Writer) -> None:
    current: list[str] = []  # the member being read, for errors raised inside tarfile or gzip
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(archive.open("rb"))
        stream: _Readable = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")) if gzipped else raw
        try:
            capped = _CappedStream(stream, writer.tree.budget, current)
            with tarfile.open(fileobj=capped, mode="r|") as tar:
                for info in tar:
                    current[:] = [info.name]
                    _unpack_tar_member(tar, info, writer)
        except _CORRUPT as exc:
            raise ArtifactError(f"the archive is corrupt: {exc}", current[-1] if current else None) from exc


def _unpack_tar_member(tar: tarfile.TarFile, info: tarfile.TarInfo, writer: _Writer) -> None:
    if info.isdir():
        writer.directory(info.name, info.mode)
    elif info.isreg():
        content = tar.extractfile(info)
        assert content is not None  # a regular member always has content
        writer.file(info.name, info.mode, content, info.size)
    elif info.issym():
        writer.symlink(info.name, info.linkname)
    elif info.islnk():
        writer.hardlink(info.name, info.linkname)
    else:
        raise ArtifactError(_tar_type_refusal(info), info.name)


def _tar_type_refusal(info: tarfile.TarInfo) -> str:
    if info.ischr():
        return "character devices are not allowed"
    if info.isblk():
        return "block devices are not allowed"
    if info.isfifo():
        return "FIFOs are not allowed"
    return f"tar member type {info.type!r} is not supported"


def _unpack_zip(archive: Path, writer: _Writer) -> None:
    current: str | None = None
    try:
        with zipfile.ZipFile(archive) as bundle:
            entries = bundle.infolist()
            limit = writer.tree.budget.max_members
            if len(entries) > limit:  # the central directory says so: no need to write anything
                raise ArtifactError(f"the artifact has more than {limit} members", entries[limit].filename)
            for info in entries:
                current = info.filename
                _unpack_zip_member(bundle, info, writer)
    except NotImplementedError as exc:  # a compression method zipfile cannot read
        raise ArtifactError(f"unsupported zip member: {exc}", current) from exc
    except _CORRUPT as exc:
        raise ArtifactError(f"the archive is corrupt: {exc}", current) from exc


def _unpack_zip_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, writer: _Writer) -> None:
    # The high 16 bits hold a Unix st_mode when the zip was made on Unix (or claims so); honour a
    # symlink or special type there whatever create_system says, so it cannot slip past as a file.
    unix_mode = info.external_attr >> 16
    kind = stat.S_IFMT(unix_mode)
    if info.flag_bits & 0x1:
        raise ArtifactError("encrypted zip members are not supported", info.filename)
    if info.is_dir() or kind == stat.S_IFDIR:
        writer.directory(info.filename, unix_mode & 0o777 or 0o755)
    elif kind == stat.S_IFLNK:
        writer.symlink(info.filename, _read_zip_symlink(bundle, info))
    elif kind in (0, stat.S_IFREG):
        with bundle.open(info) as content:
            writer.file(info.filename, unix_mode & 0o777 or 0o644, content, info.file_size)
    else:
        raise ArtifactError(_mode_refusal(unix_mode), info.filename)


def _read_zip_symlink(bundle: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    if info.file_size > _MAX_SYMLINK_TARGET:
        raise ArtifactError("symlink target is too long", info.filename)
    with bundle.open(info) as content:
        raw = content.read(_MAX_SYMLINK_TARGET + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError("symlink target is not UTF-8", info.filename) from None


def _mode_refusal(mode: int) -> str:
    names = {
        stat.S_IFCHR: "character devices",
        stat.S_IFBLK: "block devices",
        stat.S_IFIFO: "FIFOs",
        stat.S_IFSOCK: "sockets",
    }
    kind = stat.S_IFMT(mode)
    return f"{names[kind]} are not allowed" if kind in names else f"file type {oct(kind)} is not supported"


# ---------------------------------------------------------------------------------------------------
# Directories


@dataclass(frozen=True)
class _Entry:
    """One thing found under a published directory, named relative to its root and to its parent.

    `parent` is an open descriptor of the directory holding it, valid until the scan moves on: files
    are opened and links read through it, so nothing swapped in after the scan can redirect a read.
    """

    member: str
    parent: int
    name: str
    mode: int  # st_mode from lstat
    size: int


def _scan_directory(source: Path) -> Iterator[_Entry]:
    """Everything under `source`, parents before children, siblings sorted; links are not followed."""
    frames: list[tuple[int, str, Iterator[tuple[str, os.stat_result]]]] = []
    try:
        root = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        frames.append((root, "", _sorted_listing(root)))
        while frames:
            descriptor, prefix, listing = frames[-1]
            found = next(listing, None)
            if found is None:
                os.close(frames.pop()[0])
                continue
            name, status = found
            member = prefix + name
            _check_encodable(member)
            yield _Entry(member, descriptor, name, status.st_mode, status.st_size)
            if stat.S_ISDIR(status.st_mode):
                child = os.open(name, _DIR_OPEN_FLAGS, dir_fd=descriptor)
                frames.append((child, member + "/", _sorted_listing(child)))
    finally:
        for descriptor, _, _ in frames:
            os.close(descriptor)


def _sorted_listing(descriptor: int) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(descriptor) as listing:
        found = [(item.name, item.stat(follow_symlinks=False)) for item in listing]
    return iter(sorted(found, key=lambda pair: pair[0]))


def _check_encodable(member: str) -> None:
    # Non-UTF-8 file names reach Python as lone surrogates; they would not survive an archive intact.
    try:
        member.encode("utf-8")
    except UnicodeEncodeError:
        raise ArtifactError("file name is not valid UTF-8", member) from None


def _copy_entry(entry: _Entry, writer: _Writer) -> None:
    if stat.S_ISDIR(entry.mode):
        writer.directory(entry.member, entry.mode)
    elif stat.S_ISLNK(entry.mode):
        writer.symlink(entry.member, os.readlink(entry.name, dir_fd=entry.parent))
    elif stat.S_ISREG(entry.mode):
        with _open_regular(entry) as content:
            writer.file(entry.member, entry.mode, content, entry.size)
    else:
        raise ArtifactError(_mode_refusal(entry.mode), entry.member)


@contextlib.contextmanager
def _open_regular(entry: _Entry) -> Iterator[IO[bytes]]:
    """Open a file found by the scan, refusing it if it was swapped for something else since."""
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block us
        descriptor = os.open(entry.name, flags, dir_fd=entry.parent)
    except OSError as exc:
        raise ArtifactError(f"cannot open file: {exc.strerror}", entry.member) from exc
    with open(descriptor, "rb") as content:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ArtifactError("file changed type while being read", entry.member)
        yield content


def _pack_entry(entry: _Entry, tree: _Tree, tar: tarfile.TarFile) -> None:
    parts = _member_parts(entry.member)
    info = tarfile.TarInfo(entry.member)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(entry.mode):
        tree.claim_directory(entry.member, parts)
        info.type, info.mode = tarfile.DIRTYPE, entry.mode & 0o777
        tar.addfile(info)
    elif stat.S_ISLNK(entry.mode):
        link_target = os.readlink(entry.name, dir_fd=entry.parent)
        _check_symlink_target(entry.member, parts, link_target)
        tree.claim(entry.member, parts, _Node.SYMLINK)
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, link_target
        tar.addfile(info)
    elif stat.S_ISREG(entry.mode):
        tree.claim(entry.member, parts, _Node.FILE)
        with _open_regular(entry) as content:
            info.size = os.fstat(content.fileno()).st_size
            tree.budget.add_bytes(info.size, entry.member)
            info.type, info.mode = tarfile.REGTYPE, entry.mode & 0o777
            tar.addfile(info, content)
    else:
        raise ArtifactError(_mode_refusal(entry.mode), entry.member)


def _is_within(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())
