"""Working directories (whose, and which ones) and the snapshots behind `diff.patch`.

A working directory is checked when a session is opened on it, and belongs from
then on to that session's user (a claim, kept when the session is deleted):

- never `/`, a system directory, the data directory (nor inside or around it), the
  interpreter's or the server's own installation, nor, with workspace roots, a root
  itself or anything outside them;
- never on, inside, or around a directory another user has claimed, nor inside or
  around another of the same user's (a task of the outer session could swap the
  inner directory for a link between a check and a snapshot);
- for a tenant (anyone but the embedding's local user), besides: without workspace
  roots, only a directory strictly inside the system's temporary directory (and
  none of its hidden or `systemd-private-*` ones), and never one owned by another
  local user (commands would run as them); inside roots, what the operator put
  there. Handing a root-owned tree such as `/root/.config` or `/var/lib/dpkg` to
  the command uid would let a tenant plant what root runs next; operators who
  serve strangers set workspace roots;
- every refusal is the same answer, so it tells nothing about the host's files.

The claim records the directory's `(st_dev, st_ino)` and its owner `(st_uid, st_gid)`
(after the hand-over below); every task start and every tool call re-opens the path
without following links and compares (see `tools.paths.open_workspace`). With nodes
on shared storage (`shared_workspaces`), a task's admission compares the inode and
the owner but not the device (another machine's mount of the share has another
device number), then holds the task to the directory as this node sees it. A node
taking a session over re-runs a new session's checks with its own settings
(`Workspaces.seen_for_takeover`). A root-owned directory opened by a root server is
handed to `sandbox_uid` (commands run as that uid, never as root).

The snapshots behind `diff.patch` are `runtime/snapshots.py`.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

import minidevin
from minidevin.runtime.settings import Settings
from minidevin.runtime.storage import Store
from minidevin.runtime.tools.paths import (
    WorkspaceChanged,
    changed_message,
    check_workspace,
    open_directory,
    open_workspace,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")
GIT_TIMEOUT = 120
NOT_AVAILABLE = "working_directory is not available"
_UNDER = frozenset({"proc", "sys", "dev", "boot", "etc", "usr", "bin", "sbin", "run"})
_EXACTLY = frozenset({"home", "root", "tmp", "var", "srv", "opt", "mnt", "media"})
_MAX_DEPTH = 256


class WorkspaceError(Exception):
    """A working directory that is not allowed; `code` FORBIDDEN or VALIDATION_ERROR."""

    def __init__(self, message: str, code: str = "VALIDATION_ERROR") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CheckedDirectory:
    """A working directory that passed the checks: its real path and identity."""

    path: Path
    identity: tuple[int, int]
    owner_uid: int
    owner_gid: int

    def owner_after_hand_over(self, sandbox_uid: int) -> tuple[int, int]:
        """`(st_uid, st_gid)` once `hand_over` is done: a root server gives a root-owned
        directory to `sandbox_uid`."""
        if os.geteuid() == 0 and self.owner_uid == 0:
            return sandbox_uid, sandbox_uid
        return self.owner_uid, self.owner_gid


def _refused(reason: str, raw: str) -> WorkspaceError:
    """The one answer for every refusal; the reason goes to the server's log only."""
    log.info("working_directory_refused", reason=reason, working_directory=raw)
    return WorkspaceError(NOT_AVAILABLE, code="FORBIDDEN")


def _related(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other) or other.is_relative_to(path)


def _server_paths() -> tuple[Path, ...]:
    """The interpreter's installation and this package: a command must not rewrite them."""
    places = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(minidevin.__file__)}
    return tuple(Path(os.path.realpath(place)) for place in places if place)


def forbidden_reason(path: Path, data_dir: Path, roots: tuple[Path, ...]) -> str | None:
    """Why the (resolved, absolute) `path` may never be a working directory, or None."""
    parts = path.parts
    if len(parts) < 2:
        return "the filesystem root"
    top = parts[1]
    if top in _UNDER or top.startswith("lib") or (len(parts) == 2 and top in _EXACTLY):
        return "a system directory"
    if _related(path, data_dir):
        return "the data directory, inside it or containing it"
    if any(_related(path, place) for place in _server_paths()):
        return "the server's own installation"
    if roots and not any(path != root and path.is_relative_to(root) for root in roots):
        return "not inside a workspace root"
    return None


def tenant_reason(
    path: Path, owner_uid: int, roots: tuple[Path, ...], sandbox_uid: int
) -> str | None:
    """Why a tenant (not the local user) may not have the checked `path`, or None.

    Inside workspace roots the operator decided what tenants may have.
    """
    if roots:
        return None
    if owner_uid not in (0, sandbox_uid, os.geteuid()):
        return "owned by another local user"
    temp = Path(os.path.realpath(tempfile.gettempdir()))
    if path == temp or not path.is_relative_to(temp):
        return "not inside the temporary directory (no workspace roots are set)"
    below = path.relative_to(temp).parts
    if any(part.startswith((".", "systemd-private-")) for part in below):
        return "a hidden or service-private temporary directory"
    return None


def check_working_directory(raw: str, data_dir: Path, roots: tuple[Path, ...]) -> CheckedDirectory:
    """Resolve and check `raw` (blocking: call it off the event loop).

    `WorkspaceError` with VALIDATION_ERROR for a malformed value (NUL, relative), and
    with FORBIDDEN and the one message `NOT_AVAILABLE` for everything else.
    """
    if "\0" in raw:
        raise WorkspaceError("working_directory must not contain NUL bytes")
    expanded = os.path.expanduser(raw)
    if not os.path.isabs(expanded):
        raise WorkspaceError("working_directory must be an absolute path")
    try:
        resolved = Path(os.path.realpath(expanded, strict=True))
    except (OSError, ValueError):
        raise _refused("missing", raw) from None
    reason = forbidden_reason(resolved, data_dir, roots)
    if reason is not None:
        raise _refused(reason, raw)
    try:
        fd = open_workspace(resolved, None)
    except WorkspaceChanged:
        raise _refused("not a directory, or changed while checked", raw) from None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return CheckedDirectory(resolved, (info.st_dev, info.st_ino), info.st_uid, info.st_gid)


class Workspaces:
    """The runtime's working-directory claims; claims are made one at a time (a lock)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._lock = asyncio.Lock()

    async def claim(self, user_id: str, raw: str, *, tenant: bool = True) -> CheckedDirectory:
        """Check `raw` and claim it for `user_id`; a root-owned tree goes to `sandbox_uid`.

        `tenant` False only for the embedding's local user (`minidevin run`), who may
        open any directory that is not forbidden outright. `WorkspaceError`
        (FORBIDDEN with `NOT_AVAILABLE`, or VALIDATION_ERROR) otherwise.
        """
        settings = self.settings
        async with self._lock:  # check-then-insert holds: no other claim in between
            checked = await _in_own_thread(
                check_working_directory, raw, settings.data_dir, settings.workspace_roots
            )
            if tenant and (
                reason := tenant_reason(
                    checked.path, checked.owner_uid, settings.workspace_roots, settings.sandbox_uid
                )
            ):
                raise _refused(reason, raw)
            path = str(checked.path)
            for claim in await self.store.workspace_claims_around(path):
                if claim["user_id"] != user_id:
                    raise _refused("another user's working directory is on, in or around it", raw)
                if claim["path"] != path:
                    raise _refused("another of the user's directories is in or around it", raw)
            await self.store.put_workspace_claim(
                path, user_id, checked.identity, checked.owner_after_hand_over(settings.sandbox_uid)
            )
        try:
            await _in_own_thread(hand_over, checked, settings.sandbox_uid)
        except WorkspaceChanged:  # swapped between the check and the hand-over
            raise _refused("changed while handed over", raw) from None
        return checked

    async def identity(self, user_id: str, path: str, *, tenant: bool = True) -> tuple[int, int]:
        """The identity `user_id` claimed for `path`, checked against the directory now.

        `WorkspaceChanged` if the directory is no longer that one. A session older than
        claims is checked (and claimed) as a new one would be (`WorkspaceError`). With
        shared workspaces, the directory reached here without a link must have the claim's
        inode and owner (any device): its identity here is returned.
        """
        claim = await self.store.workspace_claim(path)
        if claim is not None and claim["user_id"] == user_id and self._shared(claim):
            seen = directory_here(Path(path))  # (a few syscalls: on the loop)
            if seen is None or not matches_claim(claim, *seen, shared=True):
                raise WorkspaceChanged(changed_message(path, "it is another directory now"))
            return seen[0]
        if claim is not None and claim["user_id"] == user_id:
            identity = int(claim["st_dev"]), int(claim["st_ino"])
        else:
            identity = (await self.claim(user_id, path, tenant=tenant)).identity
        verify_working_directory(Path(path), identity)  # (a few syscalls: on the loop)
        return identity

    def _shared(self, claim: dict[str, Any]) -> bool:
        """Whether `claim` is compared without its device: shared workspaces, and a claim
        that recorded its owner."""
        return self.settings.shared_workspaces and claim.get("st_uid") is not None

    async def seen_for_takeover(
        self, user_id: str, path: str, *, tenant: bool
    ) -> tuple[int, int] | None:
        """The identity here of a session's working directory `path`, if this node may take
        the session over; else None. It must be `user_id`'s claim; the directory reached
        here without a link (`check_working_directory` resolves to `path` itself) must be the
        claimed one (`matches_claim`: inode and owner; the device too unless shared
        workspaces); and it must pass the checks a new session's directory passes, with this
        node's settings (data directory, workspace roots, and for a `tenant`
        `tenant_reason`)."""
        settings = self.settings
        claim = await self.store.workspace_claim(path)
        if claim is None or claim["user_id"] != user_id:
            return None
        try:
            checked = await _in_own_thread(
                check_working_directory, path, settings.data_dir, settings.workspace_roots
            )
        except WorkspaceError:
            return None  # (logged by the check)
        reason = None
        if str(checked.path) != path:
            reason = "a symbolic link lies on its path"
        elif tenant:
            reason = tenant_reason(
                checked.path, checked.owner_uid, settings.workspace_roots, settings.sandbox_uid
            )
        if reason is None and not matches_claim(
            claim, checked.identity, (checked.owner_uid, checked.owner_gid),
            shared=settings.shared_workspaces,
        ):  # fmt: skip
            reason = "another directory than the one claimed (inode, owner or device)"
        if reason is not None:
            log.info("working_directory_not_taken_over", reason=reason, working_directory=path)
            return None
        return checked.identity


def matches_claim(
    claim: dict[str, Any], identity: tuple[int, int], owner: tuple[int, int], *, shared: bool
) -> bool:
    """Whether a directory seen here as `identity` `(st_dev, st_ino)`, owned by `owner`
    `(st_uid, st_gid)`, is the one `claim` recorded: the same inode and owner, and the same
    device unless `shared` (a claim older than recorded owners: the same device and inode)."""
    if identity[1] != int(claim["st_ino"]):
        return False
    if claim.get("st_uid") is None or claim.get("st_gid") is None:
        return identity[0] == int(claim["st_dev"])
    if owner != (int(claim["st_uid"]), int(claim["st_gid"])):
        return False
    return shared or identity[0] == int(claim["st_dev"])


def directory_here(path: Path) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """`((st_dev, st_ino), (st_uid, st_gid))` of the directory at the absolute `path`,
    reached without any symbolic link; None if it is missing, not a directory, or a link
    lies on its path."""
    try:
        fd = open_directory(os.path.abspath(path))
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError:
        return None
    return (info.st_dev, info.st_ino), (info.st_uid, info.st_gid)


async def _in_own_thread(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` off the event loop, on a thread that ends with it.

    (Not the loop's default executor: its threads outlive the call, and a burst of
    sessions would leave them behind.)
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="workspace")
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)
    finally:
        pool.shutdown(wait=False)


def verify_working_directory(path: Path, identity: tuple[int, int] | None) -> None:
    """`WorkspaceChanged` unless `path` is, without any link, still the claimed directory."""
    check_workspace(path, identity)


def hand_over(checked: CheckedDirectory, uid: int) -> int:
    """Give a root-owned working directory's tree to `uid` (a root server only).

    Never follows a link, never leaves the directory's filesystem, leaves files with
    more than one hard link alone. Returns how many entries changed owner.
    """
    if os.geteuid() != 0 or checked.owner_uid != 0:
        return 0
    top = open_workspace(checked.path, checked.identity)  # the checked one, or WorkspaceChanged
    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=top)
    finally:
        os.close(top)
    try:
        counts = {"changed": 0, "skipped": 0}
        _give_tree(fd, uid, checked.identity[0], 0, counts)
    finally:
        os.close(fd)
    log.info("working_directory_handed_over", path=str(checked.path), uid=uid, **counts)
    return counts["changed"]


def _give_tree(fd: int, uid: int, device: int, depth: int, counts: dict[str, int]) -> None:
    os.fchown(fd, uid, uid)
    counts["changed"] += 1
    if depth >= _MAX_DEPTH:
        counts["skipped"] += 1
        return
    with os.scandir(fd) as listing:
        names = [entry.name for entry in listing]
    for name in names:
        try:
            _give_entry(fd, name, uid, device, depth, counts)
        except OSError as exc:  # vanished or unreadable: left as it is
            counts["skipped"] += 1
            log.debug("hand_over_skipped", name=name, error=str(exc))


def _give_entry(
    fd: int, name: str, uid: int, device: int, depth: int, counts: dict[str, int]
) -> None:
    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    mode = info.st_mode
    if stat.S_ISLNK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
        counts["changed"] += 1
        return
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)) or info.st_dev != device:
        counts["skipped"] += 1  # a device node, or another filesystem mounted here
        return
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    child = os.open(name, flags | (os.O_DIRECTORY if stat.S_ISDIR(mode) else 0), dir_fd=fd)
    try:
        opened = os.fstat(child)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            counts["skipped"] += 1  # replaced while we looked
        elif stat.S_ISDIR(mode):
            _give_tree(child, uid, device, depth + 1, counts)
        elif opened.st_nlink > 1:
            counts["skipped"] += 1  # a hard link may be a file elsewhere: not given away
        else:
            os.fchown(child, uid, uid)
            counts["changed"] += 1
    finally:
        os.close(child)
