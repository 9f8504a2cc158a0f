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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

MAX_INDEX_BYTES = 64 << 20  # about 600,000 files; a larger index is not used
MAX_PATH, MAX_NAME = 4096, 255  # bytes (a version-4 index could grow names without bound)
HEADER = struct.Struct(">4sII")
ENTRY = struct.Struct(">10I20sH")  # ctime s/ns, mtime s/ns, dev, ino, mode, uid, gid, size
SHA1_BYTES = 20
ASSUME_VALID, EXTENDED, STAGE, NAME_LENGTH = 0x8000, 0x4000, 0x3000, 0x0FFF
KEPT_MODES = frozenset({0o100644, 0o100755, 0o120000})
# an empty, `.`, `..` or `.git` component (a leading or doubled `/` included), a NUL or a
# backslash, a component longer than MAX_NAME
BAD_PATH = re.compile(rb"(?:^|/)(?:\.{0,2}|\.[gG][iI][tT])(?:/|$)|[\\\0]|[^/]{256}")


class UnusableIndex(Exception):
    """The index cannot be trusted even as a stat cache."""


class IndexEntry(NamedTuple):
    path: bytes
    fields: tuple[int, ...]  # the ten stat fields, in the on-disk order
    oid: bytes

    @property
    def mtime_ns(self) -> int:
        return self.fields[2] * 1_000_000_000 + self.fields[3]


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


def stat_cache(data: bytes, index_mtime_ns: int, keep: Callable[[bytes], bool]) -> list[IndexEntry]:
    """The entries of index `data` fit to seed a stat cache (`keep(path)` also true)."""
    if len(data) < HEADER.size + SHA1_BYTES or len(data) > MAX_INDEX_BYTES:
        raise UnusableIndex("size")
    if hashlib.sha1(data[:-SHA1_BYTES]).digest() != data[-SHA1_BYTES:]:
        raise UnusableIndex("checksum")  # (torn, foreign, or not SHA-1)
    kept, previous, total = [], b"", 0
    for flags, entry in _entries(data):
        if entry.path < previous or (entry.path == previous and not flags & STAGE):
            raise UnusableIndex("order")  # (a conflict's stages share a path: dropped below)
        previous = entry.path
        total += len(entry.path)
        if total > 2 * len(data):
            raise UnusableIndex("names")
        _check_path(entry.path)
        mode = entry.fields[6]
        if (
            flags & (ASSUME_VALID | EXTENDED | STAGE)
            or mode not in KEPT_MODES
            or entry.mtime_ns >= index_mtime_ns
            or not keep(entry.path)
        ):
            continue
        kept.append(entry)
    return kept


def after_hand_over(
    entries: list[IndexEntry], working_directory: Path, owner: int
) -> list[IndexEntry]:
    """`entries` with the ctime and owner each file has now, for the entries recorded with
    another owner than `owner` whose file kept its mtime, size, inode and device: a tree
    handed over to the sandbox uid by `chown`. (The ctime in an index the tenant writes
    guards nothing against the tenant; without this, a handed-over tree would be hashed
    whole.)"""
    refreshed = []
    prefix = os.fsencode(working_directory) + b"/"
    for entry in entries:
        fields = entry.fields
        if fields[7] != owner:
            try:
                info = os.lstat(prefix + entry.path)
            except OSError:
                info = None
            if (
                info is not None
                and info.st_uid == owner
                and divmod(info.st_mtime_ns, 1_000_000_000) == fields[2:4]
                and (info.st_dev & 0xFFFFFFFF, info.st_ino & 0xFFFFFFFF) == fields[4:6]
                and info.st_size & 0xFFFFFFFF == fields[9]
            ):
                ctime = divmod(info.st_ctime_ns, 1_000_000_000)
                fields = (*ctime, *fields[2:7], info.st_uid, info.st_gid, fields[9])
                entry = IndexEntry(entry.path, fields, entry.oid)
        refreshed.append(entry)
    return refreshed


def _entries(data: bytes) -> Iterator[tuple[int, IndexEntry]]:
    signature, version, count = HEADER.unpack_from(data)
    if signature != b"DIRC" or version not in (2, 3, 4):
        raise UnusableIndex("header")
    offset, end, previous = HEADER.size, len(data) - SHA1_BYTES, b""
    for _ in range(count):
        if offset + ENTRY.size > end:
            raise UnusableIndex("truncated")
        *fields, oid, flags = ENTRY.unpack_from(data, offset)
        start = offset
        offset += ENTRY.size
        if flags & EXTENDED:
            if version < 3:
                raise UnusableIndex("extended flags in version 2")
            offset += 2
        if version == 4:
            strip, offset = _varint(data, offset, end)
            if strip > len(previous):
                raise UnusableIndex("prefix")
            stop = data.find(b"\0", offset, end)
            if stop < 0:
                raise UnusableIndex("name")
            path = previous[: len(previous) - strip] + data[offset:stop]
            offset = stop + 1
        else:
            stop = data.find(b"\0", offset, end)
            if stop < 0:
                raise UnusableIndex("name")
            path = data[offset:stop]
            offset = start + ((offset - start + len(path) + 8) & ~7)
        if (flags & NAME_LENGTH) != min(len(path), NAME_LENGTH) or len(path) > MAX_PATH:
            raise UnusableIndex("name length")
        previous = path
        yield flags, IndexEntry(path, tuple(fields), oid)
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


def _check_path(path: bytes) -> None:
    if BAD_PATH.search(path):
        raise UnusableIndex("path")


def write_index(path: Path, entries: list[IndexEntry]) -> None:
    """A version-2 index of `entries` (already in git's order), no extensions, at `path`."""
    parts = [HEADER.pack(b"DIRC", 2, len(entries))]
    for entry in entries:
        name = entry.path
        head = ENTRY.pack(*entry.fields, entry.oid, min(len(name), NAME_LENGTH))
        size = (ENTRY.size + len(name) + 8) & ~7
        parts.append(head + name + b"\0" * (size - ENTRY.size - len(name)))
    body = b"".join(parts)
    temporary = path.with_name(path.name + ".seed")
    with open(temporary, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        out.write(body + hashlib.sha1(body).digest())
    os.replace(temporary, path)
