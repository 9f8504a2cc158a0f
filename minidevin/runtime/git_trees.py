"""A snapshot store and the tree objects of a seeded index, made in Python (no git run).

A new store is what `git init --bare` makes, less its samples (`create_store`).
A store seeded from a repository's index (`snapshots.py`) holds none of its
objects. Its first `write-tree` would write every directory's tree as a loose
object (hundreds of files created: most of a first snapshot's time on a large
tree). The trees are a pure function of the entries, so they are computed here
and written as a single pack with its index (`.idx`, version 2) straight into
the store's `objects/pack`; `write-tree` then finds each unchanged directory's
tree already there. Nothing here reads the tenant's files: only the entries the
checked index gave (a wrong tree would merely lie unused: `write-tree` names
trees by what it computes itself).

The entries come in git's index order (whole paths, byte-wise), which is the
order of each tree's own entries too (a directory sorts as its name and `/`):
so the trees are made in one pass, each directory's closed as the next path
leaves it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

from minidevin.runtime.git_index import StatCache, UnusableIndex

TREE_TYPE = 2
STORE_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
MODE_NAMES = {0o100644: b"100644 ", 0o100755: b"100755 ", 0o120000: b"120000 "}


def create_store(git_dir: Path, exclude: str) -> None:
    """A new bare store at `git_dir` (private to the server), with `exclude` as its excludes."""
    git_dir.mkdir(mode=0o700, parents=True)
    for directory in ("info", "objects/info", "objects/pack", "refs/heads", "refs/tags"):
        (git_dir / directory).mkdir(parents=True)
    (git_dir / "info" / "exclude").write_text(exclude)
    (git_dir / "config").write_text(STORE_CONFIG)
    (git_dir / "HEAD").write_text("ref: refs/heads/master\n")


def tree_objects(kept: StatCache) -> list[tuple[bytes, bytes]]:
    """The id and body of every tree the entries of `kept` make, the root's last."""
    trees: list[tuple[bytes, bytes]] = []
    # the directories open now, outermost first: path (with its `/`), names, body parts
    open_dirs: list[tuple[bytes, set[bytes], list[bytes]]] = [(b"", set(), [])]
    modes = MODE_NAMES
    for path, mode, oid in zip(kept.paths, kept.modes, kept.oids, strict=True):
        directory, _, name = path.rpartition(b"/")
        if directory:
            directory += b"/"
        if directory != open_dirs[-1][0]:
            while not directory.startswith(open_dirs[-1][0]):
                _close(open_dirs, trees)
            opened = directory[len(open_dirs[-1][0]) : -1]  # (below the innermost still open)
            for component in opened.split(b"/") if opened else ():
                parent = open_dirs[-1]
                if component in parent[1]:
                    raise UnusableIndex("a file and a directory of one name")
                parent[1].add(component)
                open_dirs.append((parent[0] + component + b"/", set(), []))
        names, parts = open_dirs[-1][1], open_dirs[-1][2]
        if name in names:
            raise UnusableIndex("a file and a directory of one name")
        names.add(name)
        parts.append(modes[mode] + name + b"\0" + oid)
    while len(open_dirs) > 1:
        _close(open_dirs, trees)
    _close(open_dirs, trees)
    return trees


def _close(open_dirs: list[tuple[bytes, set[bytes], list[bytes]]], trees: list) -> None:
    """Close the innermost open directory: its tree, and its entry in its parent."""
    path, _, parts = open_dirs.pop()
    body = b"".join(parts)
    oid = hashlib.sha1(b"tree %d\0%s" % (len(body), body)).digest()
    trees.append((oid, body))
    if open_dirs:
        name = path[len(open_dirs[-1][0]) : -1]
        open_dirs[-1][2].append(b"40000 " + name + b"\0" + oid)


def write_tree_pack(kept: StatCache, pack_directory: Path) -> str:
    """The trees of `kept` as a pack and its index in `pack_directory` (the `.idx` last:
    git sees the pack only once both are whole); the root tree's id."""
    trees = tree_objects(kept)
    pack = bytearray(struct.pack(">4sII", b"PACK", 2, 0))  # (its count: below)
    offsets: dict[bytes, int] = {}
    checksums: dict[bytes, int] = {}
    for oid, body in trees:
        if oid in offsets:
            continue  # (two directories of the same content: one tree, packed once)
        packed = _object_header(TREE_TYPE, len(body)) + zlib.compress(body, 1)
        offsets[oid], checksums[oid] = len(pack), zlib.crc32(packed)
        pack += packed
    pack[8:12] = struct.pack(">I", len(offsets))
    pack_checksum = hashlib.sha1(pack).digest()
    pack += pack_checksum
    oids = sorted(offsets)
    if len(pack) >= 1 << 31:  # (offsets this far need the index's 64-bit table)
        raise UnusableIndex("too many trees")
    fanout, count = [], 0
    for first in range(256):
        while count < len(oids) and oids[count][0] == first:
            count += 1
        fanout.append(count)
    index = b"".join(
        [
            b"\377tOc" + struct.pack(">I", 2),
            struct.pack(">256I", *fanout),
            *oids,
            struct.pack(f">{len(oids)}I", *(checksums[oid] for oid in oids)),
            struct.pack(f">{len(oids)}I", *(offsets[oid] for oid in oids)),
            pack_checksum,
        ]
    )
    index += hashlib.sha1(index).digest()
    name = f"pack-{pack_checksum.hex()}"
    _write(pack_directory / f"{name}.pack", bytes(pack))
    _write(pack_directory / f"{name}.idx", index)
    return trees[-1][0].hex()


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb", opener=lambda p, f: os.open(p, f, 0o400)) as out:
        out.write(data)
    os.replace(temporary, path)


def _object_header(kind: int, size: int) -> bytes:
    """A pack entry's type and size: 4 bits of size in the first byte, 7 in each next."""
    byte = (kind << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)
