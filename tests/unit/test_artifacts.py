"""Installing artifacts: hostile archives and directories are refused without a trace; good ones survive.

Every hostile archive is built here with tarfile/zipfile. Each refusal must name the offending member
and leave nothing in the directory the target would have been created in (no target, no temporary
sibling).
"""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from scaleset.catalog.artifacts import (
    ArtifactError,
    copy_directory_artifact,
    install_artifact,
    pack_directory,
    unpack_archive,
)

# --- helpers -------------------------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""
    pax: dict[str, str] | None = None


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    return Member(name, data, mode=mode)


def directory(name: str, mode: int = 0o755) -> Member:
    return Member(name, type=tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Member:
    return Member(name, type=tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Member:
    return Member(name, type=tarfile.LNKTYPE, linkname=target)


def write_tar(path: Path, members: list[Member], *, gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type, info.mode, info.linkname = member.type, member.mode, member.linkname
            if member.pax is not None:
                info.pax_headers = member.pax
            if member.type == tarfile.REGTYPE:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return path


@dataclass
class ZipMember:
    name: str
    data: bytes = b""
    unix_mode: int = stat.S_IFREG | 0o644


def write_zip(path: Path, members: list[ZipMember]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for member in members:
            info = zipfile.ZipInfo(member.name)
            info.create_system = 3
            info.external_attr = member.unix_mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, member.data)
    return path


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    """Where the tests put archives: apart from `catalog`, so `catalog` must end up empty on refusal."""
    path = tmp_path / "upload"
    path.mkdir()
    return path


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog"
    path.mkdir()
    return path


def assert_refused(install: Callable[[], None], member: str | None, catalog: Path) -> ArtifactError:
    with pytest.raises(ArtifactError) as caught:
        install()
    assert caught.value.member == member, caught.value
    assert list(catalog.iterdir()) == [], "a refused artifact left something behind"
    return caught.value


Snapshot = dict[str, tuple[str, int, bytes | str]]


def snapshot(root: Path) -> Snapshot:
    """Every path under root with its kind, permission bits and content or link target."""
    found: Snapshot = {}
    for directory_path, directories, files in os.walk(root):
        for name in directories + files:
            path = Path(directory_path, name)
            relative = path.relative_to(root).as_posix()
            status = path.lstat()
            if stat.S_ISLNK(status.st_mode):
                found[relative] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(status.st_mode):
                found[relative] = ("dir", stat.S_IMODE(status.st_mode), b"")
            else:
                found[relative] = ("file", stat.S_IMODE(status.st_mode), path.read_bytes())
    return found


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    """A small image: nested directories, an executable, a safe relative symlink, a private file."""
    root = tmp_path / "sample"
    (root / "app" / "lib").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "scaleset-image.json").write_text('{"manifestVersion": 1}')
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "app" / "lib" / "util.py").write_text("X = 1\n")
    (root / "bin" / "run").write_text("#!/bin/sh\nexec python3 app/main.py\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "app" / "secret").write_text("s")
    (root / "app" / "secret").chmod(0o600)
    (root / "bin" / "main").symlink_to("../app/main.py")
    (root / "current").symlink_to("app")
    return root


# --- good archives -------------------------------------------------------------------------------------


GOOD_MEMBERS = [
    directory("./"),
    file("./scaleset-image.json", b"{}"),
    file("app/lib/deep/util.py", b"X = 1\n"),  # parents without directory entries
    file("bin/run", b"#!/bin/sh\n", mode=0o755),
    file("bin/setuid", b"#!/bin/sh\n", mode=0o4755),
    directory("private", mode=0o750),
    file("private/key", b"k", mode=0o600),
    symlink("bin/util", "../app/lib/deep/util.py"),
    symlink("here", "."),
    hardlink("bin/run2", "bin/run"),
]

GOOD_TREE: Snapshot = {
    "scaleset-image.json": ("file", 0o644, b"{}"),
    "app": ("dir", 0o755, b""),
    "app/lib": ("dir", 0o755, b""),
    "app/lib/deep": ("dir", 0o755, b""),
    "app/lib/deep/util.py": ("file", 0o644, b"X = 1\n"),
    "bin": ("dir", 0o755, b""),
    "bin/run": ("file", 0o755, b"#!/bin/sh\n"),
    "bin/run2": ("file", 0o755, b"#!/bin/sh\n"),
    "bin/setuid": ("file", 0o755, b"#!/bin/sh\n"),
    "bin/util": ("link", 0, "../app/lib/deep/util.py"),
    "here": ("link", 0, "."),
    "private": ("dir", 0o750, b""),
    "private/key": ("file", 0o600, b"k"),
}


@pytest.mark.parametrize("name", ["image.tar", "image.tar.gz", "image.tgz", "image.bin"])
def test_good_tar_round_trips(upload: Path, catalog: Path, name: str) -> None:
    archive = write_tar(upload / name, GOOD_MEMBERS, gz=name != "image.tar")
    target = catalog / "1.0.0"
    unpack_archive(archive, target)
    assert snapshot(target) == GOOD_TREE
    assert os.stat(target / "bin/run").st_ino == os.stat(target / "bin/run2").st_ino
    assert (target / "bin/util").read_bytes() == b"X = 1\n"
    assert os.stat(target).st_uid == os.getuid()
    assert sorted(path.name for path in catalog.iterdir()) == ["1.0.0"]


def test_good_zip_round_trips(upload: Path, catalog: Path) -> None:
    archive = write_zip(
        upload / "image.zip",
        [
            ZipMember("scaleset-image.json", b"{}"),
            ZipMember("app/lib/util.py", b"X = 1\n"),
            ZipMember("bin/", unix_mode=stat.S_IFDIR | 0o755),
            ZipMember("bin/run", b"#!/bin/sh\n", unix_mode=stat.S_IFREG | 0o755),
            ZipMember("bin/util", b"../app/lib/util.py", unix_mode=stat.S_IFLNK | 0o777),
        ],
    )
    target = catalog / "1.0.0"
    unpack_archive(archive, target)
    assert snapshot(target) == {
        "scaleset-image.json": ("file", 0o644, b"{}"),
        "app": ("dir", 0o755, b""),
        "app/lib": ("dir", 0o755, b""),
        "app/lib/util.py": ("file", 0o644, b"X = 1\n"),
        "bin": ("dir", 0o755, b""),
        "bin/run": ("file", 0o755, b"#!/bin/sh\n"),
        "bin/util": ("link", 0, "../app/lib/util.py"),
    }


def test_zip_without_unix_modes_gets_defaults(upload: Path, catalog: Path) -> None:
    archive = upload / "dos.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        info = zipfile.ZipInfo("a/b.txt")
        info.create_system = 0
        info.external_attr = 0x20  # MS-DOS "archive" attribute; no Unix mode in the high bits
        bundle.writestr(info, b"b")
    unpack_archive(archive, catalog / "v")
    assert snapshot(catalog / "v") == {"a": ("dir", 0o755, b""), "a/b.txt": ("file", 0o644, b"b")}


def test_zip_recognised_by_content(upload: Path, catalog: Path) -> None:
    archive = write_zip(upload / "image.tar.gz", [ZipMember("a.txt", b"a")])
    unpack_archive(archive, catalog / "v")
    assert (catalog / "v" / "a.txt").read_bytes() == b"a"


# --- hostile tar archives ------------------------------------------------------------------------------


HOSTILE_TARS: list[tuple[str, list[Member], str]] = [
    ("absolute path", [file("/etc/evil")], "/etc/evil"),
    ("dot-dot", [file("../evil")], "../evil"),
    ("dot-dot inside", [file("ok"), file("a/../../evil")], "a/../../evil"),
    ("NUL in a pax name", [Member("x", b"x", pax={"path": "evil\x00.txt"})], "evil\x00.txt"),
    ("backslash", [file("..\\evil")], "..\\evil"),
    ("absolute symlink", [symlink("d", "/tmp")], "d"),
    ("absolute symlink, then through it", [symlink("d", "/tmp"), file("d/x")], "d"),
    ("symlink climbing out", [symlink("up", "../..")], "up"),
    ("nested symlink climbing out", [symlink("a/b/up", "../../..")], "a/b/up"),
    (
        "symlink to root, then dot-dot through it",
        [symlink("link", "."), file("link/../../x")],
        "link/../../x",
    ),
    ("symlink to root, then through it", [symlink("link", "."), file("link/x")], "link/x"),
    ("safe symlink, then through it", [directory("sub"), symlink("link", "sub"), file("link/x")], "link/x"),
    (
        "symlink chained through another symlink",
        [directory("x"), symlink("x/l1", ".."), symlink("l2", "x/l1/..")],
        "l2",
    ),
    ("symlink chained before its link exists", [symlink("l2", "x/l1/.."), symlink("x/l1", "..")], "l2"),
    ("file over a symlink", [symlink("a", "b"), file("a")], "a"),
    ("symlink over a file", [file("a"), symlink("a", "b")], "a"),
    ("duplicate file", [file("a"), file("a")], "a"),
    ("directory over a file", [file("a"), directory("a")], "a"),
    ("empty symlink target", [symlink("a", "")], "a"),
    ("hard link outside", [hardlink("h", "/etc/passwd")], "h"),
    ("hard link climbing out", [hardlink("h", "../x")], "h"),
    ("hard link to a missing member", [hardlink("h", "later"), file("later")], "h"),
    ("hard link to a symlink", [symlink("s", "t"), file("t"), hardlink("h", "s")], "h"),
    ("hard link to a directory", [directory("d"), hardlink("h", "d")], "h"),
    ("hard link through a symlink", [file("d/f"), symlink("s", "d"), hardlink("h", "s/f")], "h"),
    ("character device", [Member("dev/null", type=tarfile.CHRTYPE)], "dev/null"),
    ("block device", [Member("dev/sda", type=tarfile.BLKTYPE)], "dev/sda"),
    ("FIFO", [file("ok"), Member("pipe", type=tarfile.FIFOTYPE)], "pipe"),
    ("unknown member type", [Member("volume", type=b"V")], "volume"),
    ("file as the root", [file("./")], "./"),
]


@pytest.mark.parametrize(
    ("members", "offender"), [case[1:] for case in HOSTILE_TARS], ids=[case[0] for case in HOSTILE_TARS]
)
@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tgz"])
def test_hostile_tar_is_refused(
    upload: Path, catalog: Path, members: list[Member], offender: str, gz: bool
) -> None:
    archive = write_tar(upload / "evil.tar", members, gz=gz)
    assert_refused(lambda: unpack_archive(archive, catalog / "v"), offender, catalog)
    assert not (upload.parent / "evil").exists()


def test_tar_bomb_is_refused(upload: Path, catalog: Path) -> None:
    archive = write_tar(upload / "bomb.tgz", [file("small", b"a" * 500), file("huge", b"\0" * 5000)], gz=True)
    assert archive.stat().st_size < 1000  # compresses away: only unpacking shows the size
    error = assert_refused(lambda: unpack_archive(archive, catalog / "v", max_bytes=1000), "huge", catalog)
    assert "1000 bytes" in error.message


def test_tar_bomb_of_many_small_files_is_refused(upload: Path, catalog: Path) -> None:
    members = [file(f"f{index}", b"a" * 300) for index in range(4)]
    archive = write_tar(upload / "bomb.tar", members)
    assert_refused(lambda: unpack_archive(archive, catalog / "v", max_bytes=1000), "f3", catalog)


def test_tar_with_too_many_members_is_refused(upload: Path, catalog: Path) -> None:
    archive = write_tar(upload / "many.tar", [file(f"f{index}") for index in range(5)])
    assert_refused(lambda: unpack_archive(archive, catalog / "v", max_members=4), "f4", catalog)


def test_tar_header_bomb_is_refused(upload: Path, catalog: Path) -> None:
    # A name this long travels in a pax header, read into memory before the member is seen.
    archive = write_tar(upload / "header.tgz", [file("a" * 200_000)], gz=True)
    error = assert_refused(
        lambda: unpack_archive(archive, catalog / "v", max_bytes=1000, max_members=2), None, catalog
    )
    assert "tar stream" in error.message


@pytest.mark.parametrize(
    "content", [b"", b"not an archive at all", b"\x1f\x8b\x08\x00garbage", b"PK\x03\x04garbage"]
)
def test_corrupt_or_unknown_archive_is_refused(upload: Path, catalog: Path, content: bytes) -> None:
    archive = upload / "junk.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(ArtifactError):
        unpack_archive(archive, catalog / "v")
    assert list(catalog.iterdir()) == []


def test_truncated_tar_is_refused(upload: Path, catalog: Path) -> None:
    whole = write_tar(upload / "whole.tar", [file("a", b"a" * 10_000), file("b", b"b" * 10_000)])
    archive = upload / "cut.tar"
    archive.write_bytes(whole.read_bytes()[:12_000])
    with pytest.raises(ArtifactError):
        unpack_archive(archive, catalog / "v")
    assert list(catalog.iterdir()) == []


def test_existing_target_is_left_alone(upload: Path, catalog: Path) -> None:
    archive = write_tar(upload / "ok.tar", [file("a")])
    (catalog / "v").mkdir()
    (catalog / "v" / "keep").write_text("keep")
    with pytest.raises(FileExistsError):
        unpack_archive(archive, catalog / "v")
    assert [path.name for path in catalog.iterdir()] == ["v"]
    assert (catalog / "v" / "keep").read_text() == "keep"


# --- hostile zip archives ------------------------------------------------------------------------------


HOSTILE_ZIPS: list[tuple[str, list[ZipMember], str]] = [
    ("absolute path", [ZipMember("/etc/evil", b"x")], "/etc/evil"),
    ("dot-dot", [ZipMember("a/../../evil", b"x")], "a/../../evil"),
    ("symlink climbing out", [ZipMember("link", b"../../etc", stat.S_IFLNK | 0o777)], "link"),
    ("absolute symlink", [ZipMember("link", b"/etc", stat.S_IFLNK | 0o777)], "link"),
    (
        "symlink to root, then through it",
        [ZipMember("link", b".", stat.S_IFLNK | 0o777), ZipMember("link/x", b"x")],
        "link/x",
    ),
    ("character device", [ZipMember("null", b"", stat.S_IFCHR | 0o666)], "null"),
    ("FIFO", [ZipMember("pipe", b"", stat.S_IFIFO | 0o644)], "pipe"),
    ("socket", [ZipMember("sock", b"", stat.S_IFSOCK | 0o644)], "sock"),
]


@pytest.mark.parametrize(
    ("members", "offender"), [case[1:] for case in HOSTILE_ZIPS], ids=[case[0] for case in HOSTILE_ZIPS]
)
def test_hostile_zip_is_refused(upload: Path, catalog: Path, members: list[ZipMember], offender: str) -> None:
    archive = write_zip(upload / "evil.zip", members)
    assert_refused(lambda: unpack_archive(archive, catalog / "v"), offender, catalog)


def test_zip_symlink_is_judged_whatever_the_creating_system(upload: Path, catalog: Path) -> None:
    archive = upload / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        info = zipfile.ZipInfo("link")
        info.create_system = 0  # claims MS-DOS but carries a Unix symlink mode
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, b"/etc/passwd")
    assert_refused(lambda: unpack_archive(archive, catalog / "v"), "link", catalog)


def test_zip_bomb_is_refused(upload: Path, catalog: Path) -> None:
    archive = write_zip(upload / "bomb.zip", [ZipMember("ok", b"ok"), ZipMember("zeros", b"\0" * 2**20)])
    assert archive.stat().st_size < 10_000
    assert_refused(lambda: unpack_archive(archive, catalog / "v", max_bytes=2**16), "zeros", catalog)


def test_zip_with_too_many_members_is_refused(upload: Path, catalog: Path) -> None:
    archive = write_zip(upload / "many.zip", [ZipMember(f"f{index}", b"x") for index in range(5)])
    assert_refused(lambda: unpack_archive(archive, catalog / "v", max_members=3), "f3", catalog)


def test_encrypted_zip_member_is_refused(upload: Path, catalog: Path) -> None:
    # zipfile cannot write encrypted members: set the "encrypted" flag in both headers by hand.
    plain = write_zip(upload / "plain.zip", [ZipMember("secret", b"not really encrypted")]).read_bytes()
    central = plain.index(b"PK\x01\x02")
    patched = bytearray(plain)
    patched[6] |= 0x1  # local file header: general purpose flags at offset 6
    patched[central + 8] |= 0x1  # central directory header: flags at offset 8
    archive = upload / "secret.zip"
    archive.write_bytes(bytes(patched))
    assert_refused(lambda: unpack_archive(archive, catalog / "v"), "secret", catalog)


# --- directories ---------------------------------------------------------------------------------------


def test_directory_copy_round_trips(sample_tree: Path, catalog: Path) -> None:
    copy_directory_artifact(sample_tree, catalog / "v")
    assert snapshot(catalog / "v") == snapshot(sample_tree)
    assert sorted(path.name for path in catalog.iterdir()) == ["v"]


def test_install_artifact_dispatches_on_kind(sample_tree: Path, upload: Path, catalog: Path) -> None:
    install_artifact(sample_tree, catalog / "from-dir")
    archive = upload / "image.tar.gz"
    archive.write_bytes(pack_directory(sample_tree))
    install_artifact(archive, catalog / "from-archive")
    assert snapshot(catalog / "from-dir") == snapshot(catalog / "from-archive") == snapshot(sample_tree)
    with pytest.raises(FileNotFoundError):
        install_artifact(upload / "missing", catalog / "nothing")


def make_fifo(root: Path) -> str:
    os.mkfifo(root / "pipe")
    return "pipe"


def make_socket(root: Path) -> str:
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(root / "sock"))
    finally:
        server.close()  # the socket file stays behind
    return "sock"


def make_char_device(root: Path) -> str:
    try:
        os.mknod(root / "app" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating device files needs CAP_MKNOD")
    return "app/null"


def make_escaping_symlink(root: Path) -> str:
    (root / "app" / "up").symlink_to("../../outside")
    return "app/up"


def make_absolute_symlink(root: Path) -> str:
    (root / "etc").symlink_to("/etc")
    return "etc"


def make_middle_dot_dot_symlink(root: Path) -> str:
    (root / "back").symlink_to("current/..")
    return "back"


HOSTILE_DIRECTORIES: dict[str, Callable[[Path], str]] = {
    "fifo": make_fifo,
    "socket": make_socket,
    "character device": make_char_device,
    "escaping symlink": make_escaping_symlink,
    "absolute symlink": make_absolute_symlink,
    "dot-dot after a symlink": make_middle_dot_dot_symlink,
}


@pytest.fixture(params=list(HOSTILE_DIRECTORIES), ids=list(HOSTILE_DIRECTORIES))
def hostile_tree(request: pytest.FixtureRequest, sample_tree: Path) -> tuple[Path, str]:
    return sample_tree, HOSTILE_DIRECTORIES[request.param](sample_tree)


def test_hostile_directory_copy_is_refused(hostile_tree: tuple[Path, str], catalog: Path) -> None:
    source, offender = hostile_tree
    assert_refused(lambda: copy_directory_artifact(source, catalog / "v"), offender, catalog)


def test_hostile_directory_is_not_packed(hostile_tree: tuple[Path, str]) -> None:
    source, offender = hostile_tree
    with pytest.raises(ArtifactError) as caught:
        pack_directory(source)
    assert caught.value.member == offender


def test_directory_over_the_size_limit_is_refused(sample_tree: Path, catalog: Path) -> None:
    (sample_tree / "app" / "big").write_bytes(b"\0" * 5000)
    assert_refused(
        lambda: copy_directory_artifact(sample_tree, catalog / "v", max_bytes=4096), "app/big", catalog
    )
    with pytest.raises(ArtifactError):
        pack_directory(sample_tree, max_bytes=4096)


def test_directory_with_too_many_members_is_refused(sample_tree: Path, catalog: Path) -> None:
    # Sorted walk: app, app/lib, app/lib/util.py, ... the fourth member is the one refused.
    assert_refused(
        lambda: copy_directory_artifact(sample_tree, catalog / "v", max_members=3), "app/main.py", catalog
    )


def test_directory_cannot_be_copied_into_itself(sample_tree: Path) -> None:
    with pytest.raises(ValueError):
        copy_directory_artifact(sample_tree, sample_tree / "copy")
    assert not (sample_tree / "copy").exists()


def test_directory_copy_does_not_follow_a_symlinked_subdirectory(sample_tree: Path, catalog: Path) -> None:
    outside = sample_tree.parent / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (sample_tree / "out").symlink_to("../outside")
    assert_refused(lambda: copy_directory_artifact(sample_tree, catalog / "v"), "out", catalog)


# --- packing -------------------------------------------------------------------------------------------


def test_pack_is_deterministic(sample_tree: Path) -> None:
    first = pack_directory(sample_tree)
    os.utime(sample_tree / "app" / "main.py", (1_000_000, 1_000_000))
    os.utime(sample_tree / "app", (2_000_000, 2_000_000))
    assert pack_directory(sample_tree) == first


def test_pack_members_are_sorted_and_anonymous(sample_tree: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(pack_directory(sample_tree)), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [member.name for member in members]
    assert names == [
        "app",
        "app/lib",
        "app/lib/util.py",
        "app/main.py",
        "app/secret",
        "bin",
        "bin/main",
        "bin/run",
        "current",
        "scaleset-image.json",
    ]
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")


def test_pack_unpacks_to_the_same_tree(sample_tree: Path, upload: Path, catalog: Path) -> None:
    archive = upload / "image.tar.gz"
    archive.write_bytes(pack_directory(sample_tree))
    unpack_archive(archive, catalog / "v")
    assert snapshot(catalog / "v") == snapshot(sample_tree)


def test_pack_drops_special_permission_bits(sample_tree: Path, upload: Path, catalog: Path) -> None:
    (sample_tree / "bin" / "run").chmod(0o4755)
    archive = upload / "image.tar.gz"
    archive.write_bytes(pack_directory(sample_tree))
    unpack_archive(archive, catalog / "v")
    assert stat.S_IMODE((catalog / "v" / "bin" / "run").stat().st_mode) == 0o755
