"""The tree objects of a seeded index, made in Python and handed to git as one pack.

A store seeded from a repository's index (`snapshots.py`) holds none of its
objects. Its first `write-tree` would write every directory's tree as a loose
object (hundreds of files created: most of a first snapshot's time on a large
tree). The trees are a pure function of the entries, so they are computed here
and given to `git index-pack` as a single pack; `write-tree` then finds each
unchanged directory's tree already there.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Any

from minidevin.runtime.git_index import IndexEntry, UnusableIndex

TREE_TYPE = 2
TREE_MODE = 0o40000


def tree_pack(entries: list[IndexEntry]) -> bytes:
    """A pack of the trees `entries` (in git's order) make, root included."""
    root: dict[bytes, Any] = {}
    for entry in entries:
        *directories, name = entry.path.split(b"/")
        node = root
        for directory in directories:
            child = node.setdefault(directory, {})
            if not isinstance(child, dict):
                raise UnusableIndex("a file and a directory of one name")
            node = child
        if name in node:
            raise UnusableIndex("a file and a directory of one name")
        node[name] = (entry.fields[6], entry.oid)
    trees: list[bytes] = []
    _tree(root, trees)
    body = [struct.pack(">4sII", b"PACK", 2, len(trees))]
    for tree in trees:
        body.append(_object_header(TREE_TYPE, len(tree)) + zlib.compress(tree, 1))
    pack = b"".join(body)
    return pack + hashlib.sha1(pack).digest()


def _tree(node: dict[bytes, Any], trees: list[bytes]) -> bytes:
    """The id of `node`'s tree; its body and its subtrees' go into `trees`."""
    items = []
    for name, value in node.items():
        if isinstance(value, dict):
            items.append((name + b"/", name, TREE_MODE, _tree(value, trees)))
        else:
            items.append((name, name, *value))
    items.sort()
    body = b"".join(b"%o %s\0%s" % (mode, name, oid) for _, name, mode, oid in items)
    trees.append(body)
    return hashlib.sha1(b"tree %d\0%s" % (len(body), body)).digest()


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
