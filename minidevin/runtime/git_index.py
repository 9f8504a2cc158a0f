"""A repository's index read as untrusted data, and a clean index written from it.

The first snapshot of a git repository starts from the repository's own stat
cache (`snapshots.py`): its index says, for each tracked file, the stat it had
when git last hashed it and the blob id of its content, so a file whose stat is
unchanged need not be hashed again. That index was written by the tenant's
commands, so it is parsed here, in Python, not by the server's git, and only
what a stat cache needs is kept:

- the file's checksum must hold (a torn or foreign file, or a SHA-256
  repository, is not used at all), and so must every path (no empty, `.`, `..`
  or `.git` component, none absolute, in git's order);
- entries that could hide a change are dropped, to be hashed like any other
  file: conflict stages, `assume-unchanged`, `skip-worktree` and
  `intent-to-add` marks, submodules, anything but a file or a link, and entries
  as new as the index itself (git's "racily clean" ones);
- the extensions (the cache tree above all, which `write-tree` would trust
  over the entries) are not copied: the index written is version 2 with the
  entries alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

MAX_INDEX_BYTES = 64 << 20  # about 600,000 files; a larger index is not used
MAX_PATH, MAX_NAME = 4096, 255  # bytes (a version-4 index could grow names without bound)
HEADER = struct.Struct(">4sII")
ENTRY = struct.Struct(">10I20sH")  # ctime s/ns, mtime s/ns, dev, ino, mode, uid, gid, size
CTIME_FIELDS, OWNER_FIELDS = struct.Struct(">II"), struct.Struct(">II")  # at 0 and 28
HANDED_OVER_FIELDS = struct.Struct(">8xIIII12xI")  # mtime s/ns, dev, ino, size
KEPT_FIELDS = struct.Struct(">8xII8xII8x20sH")  # mtime s/ns, mode, uid, oid, flags
PADDING = tuple(b"\0" * (8 - n) for n in range(8))  # after 62 + name bytes = n mod 8
SHA1_BYTES = 20
ASSUME_VALID, EXTENDED, STAGE, NAME_LENGTH = 0x8000, 0x4000, 0x3000, 0x0FFF
KEPT_MODES = frozenset({0o100644, 0o100755, 0o120000})
# in the paths, each after a NUL (a NUL ends each name: none holds one): an empty, `.`, `..`
# or `.git` component (a leading or doubled `/` included), its end where `$` would match in
# the path alone (before a last newline too); and a component longer than MAX_NAME
BAD_COMPONENT = re.compile(rb"[/\0](?:\.(?:\.?|[gG][iI][tT]))?(?:/|(?=\n?(?:\0|\Z)))")
LONG_NAME = re.compile(rb"[^/]{256}")


class UnusableIndex(Exception):
    """The index cannot be trusted even as a stat cache."""


class IndexEntry(NamedTuple):
    path: bytes
    fields: tuple[int, ...]  # the ten stat fields, in the on-disk order
    oid: bytes

    @property
    def mtime_ns(self) -> int:
        return self.fields[2] * 1_000_000_000 + self.fields[3]


class StatCache(NamedTuple):
    """The entries kept from a repository's index, as parallel lists in git's order."""

    paths: list[bytes]
    modes: list[int]
    oids: list[bytes]
    owners: list[int]  # each entry's recorded uid
    records: list[bytes]  # each entry as a version-2 index holds it (name padded with NULs)


def file_identity(path: Path) -> tuple[int, int, int, bytes] | None:
    """An index file's inode, size, mtime and trailing checksum (the SHA-1 of all it holds:
    equal only for the same entries, whatever inode a later write reuses and however coarse
    the file system's clock); None without one (no file, or `index.skipHash`'s zeros)."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_size < 32:
                return None
            handle.seek(-20, os.SEEK_END)
            checksum = handle.read(20)
    except OSError:
        return None
    if checksum == bytes(20):
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns, checksum


def read_repository_index(directory: int, owners: set[int]) -> tuple[bytes, int] | None:
    """The bytes and mtime (ns) of `.git/index` beneath the directory descriptor `directory`,
    opened without following a link at any step; None when there is none, it is not a
    regular file, is too large, or belongs to none of `owners`."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds: list[int] = []
    try:
        fds.append(os.open(".git", flags | os.O_DIRECTORY, dir_fd=directory))
        fds.append(os.open("index", flags | os.O_NONBLOCK, dir_fd=fds[-1]))
        info = os.fstat(fds[-1])
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_INDEX_BYTES:
            return None
        if info.st_uid not in owners:
            return None
        with os.fdopen(os.dup(fds[-1]), "rb") as index:
            return index.read(MAX_INDEX_BYTES + 1), info.st_mtime_ns
    except OSError:
        return None
    finally:
        for fd in fds:
            os.close(fd)


def read_stat_cache(data: bytes, index_mtime_ns: int, keep: Callable[[bytes], bool]) -> StatCache:
    """The entries of index `data` fit to seed a stat cache (`keep(path)` also true)."""
    if len(data) < HEADER.size + SHA1_BYTES or len(data) > MAX_INDEX_BYTES:
        raise UnusableIndex("size")
    if hashlib.sha1(data[:-SHA1_BYTES]).digest() != data[-SHA1_BYTES:]:
        raise UnusableIndex("checksum")  # (torn, foreign, or not SHA-1)
    signature, version, count = HEADER.unpack_from(data)
    if signature != b"DIRC" or version not in (2, 3, 4):
        raise UnusableIndex("header")
    entries = _entries(data, count) if version == 4 else _entries_v2(data, count, version)
    kept = StatCache([], [], [], [], [])
    paths, previous = [], b""
    ignored = ASSUME_VALID | EXTENDED | STAGE
    for path, mtime_s, mtime_ns, mode, uid, oid, flags, record in entries:
        if path <= previous and (path < previous or not flags & STAGE):
            raise UnusableIndex("order")  # (a conflict's stages share a path: dropped below)
        previous = path
        paths.append(path)
        if (
            flags & ignored
            or mode not in KEPT_MODES
            or mtime_s * 1_000_000_000 + mtime_ns >= index_mtime_ns
            or not keep(path)
        ):
            continue
        kept.paths.append(path)
        kept.modes.append(mode)
        kept.oids.append(oid)
        kept.owners.append(uid)
        kept.records.append(record)
    _check_paths(paths)
    return kept


def _check_paths(paths: list[bytes]) -> None:
    """Each path relative, without a `.`, `..` or `.git` component, a backslash or a name
    longer than `MAX_NAME` (one search of them all: a search each costs 10 times more)."""
    joined = b"\0" + b"\0".join(paths)
    if b"\\" in joined or BAD_COMPONENT.search(joined):
        raise UnusableIndex("path")
    longest = max(map(len, paths), default=0)  # (only a path this long can have one)
    if longest > MAX_NAME and any(LONG_NAME.search(p) for p in paths if len(p) > MAX_NAME):
        raise UnusableIndex("path")


def stat_cache(data: bytes, index_mtime_ns: int, keep: Callable[[bytes], bool]) -> list[IndexEntry]:
    """`read_stat_cache`'s entries, one object each."""
    kept = read_stat_cache(data, index_mtime_ns, keep)
    return [
        IndexEntry(path, ENTRY.unpack_from(record)[:10], oid)
        for path, oid, record in zip(kept.paths, kept.oids, kept.records, strict=True)
    ]


def after_hand_over(kept: StatCache, directory: int, owner: int) -> StatCache:
    """`kept` with the ctime and owner each file has now, for the entries recorded with
    another owner than `owner` whose file kept its mtime, size, inode and device: a tree
    handed over to the sandbox uid by `chown`. (The ctime in an index the tenant writes
    guards nothing against the tenant; without this, a handed-over tree would be hashed
    whole.) Paths are looked up beneath the directory descriptor `directory`."""
    if all(uid == owner for uid in kept.owners):
        return kept
    records, paths, lookup = list(kept.records), kept.paths, os.stat
    for number, uid in enumerate(kept.owners):
        if uid == owner:
            continue
        try:
            info = lookup(paths[number], dir_fd=directory, follow_symlinks=False)
        except OSError:
            continue
        record = records[number]
        mtime_s, mtime_ns, dev, ino, size = HANDED_OVER_FIELDS.unpack_from(record)
        if (
            info.st_uid == owner
            and info.st_mtime_ns == mtime_s * 1_000_000_000 + mtime_ns
            and info.st_ino & 0xFFFFFFFF == ino
            and info.st_dev & 0xFFFFFFFF == dev
            and info.st_size & 0xFFFFFFFF == size
        ):
            ctime = divmod(info.st_ctime_ns, 1_000_000_000)
            owners = OWNER_FIELDS.pack(info.st_uid, info.st_gid)
            records[number] = CTIME_FIELDS.pack(*ctime) + record[8:28] + owners + record[36:]
    return kept._replace(records=records)


Entry = tuple[bytes, int, int, int, int, bytes, int, bytes]  # path, mtime s/ns, mode, uid...


def _entries_v2(data: bytes, count: int, version: int) -> Iterator[Entry]:
    """A version-2 or -3 index's entries: path, mtime (s, ns), mode, uid, oid, flags and
    the entry as a version-2 index holds it (padding made NULs whatever it was)."""
    unpack, find, pads = KEPT_FIELDS.unpack_from, data.find, PADDING
    offset, end, extended = HEADER.size, len(data) - SHA1_BYTES, version >= 3
    for _ in range(count):
        if offset + ENTRY.size > end:
            raise UnusableIndex("truncated")
        mtime_s, mtime_ns, mode, uid, oid, flags = unpack(data, offset)
        start = offset + ENTRY.size
        if flags & EXTENDED:
            if not extended:
                raise UnusableIndex("extended flags in version 2")
            start += 2
        stop = find(b"\0", start, end)
        if stop < 0:
            raise UnusableIndex("name")
        length = stop - start
        if (flags & NAME_LENGTH) != (length if length < NAME_LENGTH else NAME_LENGTH):
            raise UnusableIndex("name length")
        if length > MAX_PATH:
            raise UnusableIndex("name length")
        record = data[offset:stop] + pads[(ENTRY.size + length) & 7]  # (kept: never extended)
        yield data[start:stop], mtime_s, mtime_ns, mode, uid, oid, flags, record
        offset += (start - offset + length + 8) & ~7
    if offset > end:
        raise UnusableIndex("truncated")


def _entries(data: bytes, count: int) -> Iterator[Entry]:
    """A version-4 index's entries (names as a prefix of the last one's and a suffix), as
    `_entries_v2` gives them."""
    offset, end, previous, total = HEADER.size, len(data) - SHA1_BYTES, b"", 0
    for _ in range(count):
        if offset + ENTRY.size > end:
            raise UnusableIndex("truncated")
        *fields, oid, flags = ENTRY.unpack_from(data, offset)
        offset += ENTRY.size
        if flags & EXTENDED:
            offset += 2
        strip, offset = _varint(data, offset, end)
        if strip > len(previous):
            raise UnusableIndex("prefix")
        stop = data.find(b"\0", offset, end)
        if stop < 0:
            raise UnusableIndex("name")
        path = previous[: len(previous) - strip] + data[offset:stop]
        offset = stop + 1
        total += len(path)
        if total > 2 * len(data):
            raise UnusableIndex("names")
        if (flags & NAME_LENGTH) != min(len(path), NAME_LENGTH) or len(path) > MAX_PATH:
            raise UnusableIndex("name length")
        previous = path
        record = ENTRY.pack(*fields, oid, flags) + path + PADDING[(ENTRY.size + len(path)) & 7]
        yield path, fields[2], fields[3], fields[6], fields[7], oid, flags, record
    if offset > end:
        raise UnusableIndex("truncated")


def _varint(data: bytes, offset: int, end: int) -> tuple[int, int]:
    """Git's offset encoding (index version 4's prefix lengths)."""
    if offset >= end:
        raise UnusableIndex("truncated")
    byte = data[offset]
    value = byte & 0x7F
    while byte & 0x80:
        offset += 1
        if offset >= end or value > 1 << 32:
            raise UnusableIndex("varint")
        byte = data[offset]
        value = ((value + 1) << 7) | (byte & 0x7F)
    return value, offset + 1


def write_stat_cache(path: Path, kept: StatCache) -> None:
    """A version-2 index of `kept`, no extensions, at `path`."""
    _write(path, len(kept.records), kept.records)


def write_index(path: Path, entries: list[IndexEntry]) -> None:
    """A version-2 index of `entries` (already in git's order), no extensions, at `path`."""
    records = (
        ENTRY.pack(*entry.fields, entry.oid, min(len(entry.path), NAME_LENGTH))
        + entry.path
        + PADDING[(ENTRY.size + len(entry.path)) & 7]
        for entry in entries
    )
    _write(path, len(entries), records)


def _write(path: Path, count: int, records: Iterable[bytes]) -> None:
    body = HEADER.pack(b"DIRC", 2, count) + b"".join(records)
    temporary = path.with_name(path.name + ".seed")
    with open(temporary, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(body + hashlib.sha1(body).digest())
    os.replace(temporary, path)
