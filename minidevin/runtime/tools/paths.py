"""Keep every path a tool touches inside the task's working directory.

The editor never checks a path and then opens it. Each call opens the working
directory once (no symbolic link in any component of its path, and the same
directory, by `(st_dev, st_ino)`, as when the session was created), then opens
everything beneath that descriptor with `openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` or, on kernels without `openat2`,
one component at a time with `O_NOFOLLOW` on directory descriptors. Symbolic
links are never followed, not even those that point inside the workspace.

While it works, the calling thread's filesystem uid and gid (`setfsuid`, per
thread on Linux) are those commands run as, so the editor can touch only what
a command could, and what it creates belongs to that uid.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from minidevin.runtime.tools.base import ToolError

_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_SETFSUID = {"x86_64": 122, "aarch64": 151}.get(platform.machine())
_SYS_SETFSGID = {"x86_64": 123, "aarch64": 152}.get(platform.machine())
_DIRECTORY = os.O_PATH | os.O_DIRECTORY
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_openat2_missing = False  # set once the kernel (or a seccomp filter) says ENOSYS/EPERM

LINK_REFUSED = (
    "the editor does not follow symbolic links (they could lead outside the working "
    "directory); use the terminal to work with links"
)


class WorkspaceChanged(ToolError):
    """The working directory is no longer the one checked when the session was created."""


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def _openat2(dir_fd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, resolve)
    fd = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def _walk(dir_fd: int, parts: tuple[str, ...], flags: int, mode: int) -> int:
    """Open `parts` beneath `dir_fd` one component at a time, never following a link."""
    current, owned = dir_fd, False
    try:
        for name in parts[:-1]:
            try:
                following = os.open(name, _DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            except NotADirectoryError:
                if stat.S_ISLNK(os.stat(name, dir_fd=current, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
                raise
            if owned:
                os.close(current)
            current, owned = following, True
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
        if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), parts[-1])
        return fd
    finally:
        if owned:
            os.close(current)


def open_beneath(dir_fd: int, parts: tuple[str, ...], flags: int, mode: int = 0o666) -> int:
    """A descriptor for `parts` beneath `dir_fd`; `OSError(ELOOP)` at any symbolic link."""
    global _openat2_missing
    flags |= os.O_CLOEXEC
    if not parts:
        parts = (".",)
    if not _openat2_missing:
        resolve = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        try:
            return _openat2(dir_fd, "/".join(parts), flags, mode, resolve)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _openat2_missing = True
    return _walk(dir_fd, parts, flags, mode)


def split_path(working_directory: Path, path: object) -> tuple[str, ...]:
    """`path` (relative to the working directory, or absolute inside it) as components.

    Lexical only (no component is `..` or `.` afterwards); `()` is the directory itself.
    Raises `ToolError` for a path that leaves the working directory.
    """
    if not isinstance(path, str) or not path:
        raise ToolError("path must be a non-empty string")
    if "\x00" in path:
        raise ToolError("path must not contain NUL characters")
    root = os.path.normpath(os.path.abspath(working_directory))
    relative = os.path.normpath(path)
    if os.path.isabs(relative):
        relative = os.path.relpath(relative, root)
    if relative == ".." or relative.startswith("../") or os.path.isabs(relative):
        raise ToolError(
            f"path {path!r} is outside the working directory {root!r}; use a path inside "
            "the working directory"
        )
    return () if relative == "." else tuple(relative.split("/"))


def open_directory(path: str) -> int:
    """An `O_PATH` descriptor of the directory at the absolute `path`, reached from `/`
    without any symbolic link (`OSError` if it is missing, not a directory, or a link lies
    on its path)."""
    top = os.open("/", _DIRECTORY | os.O_CLOEXEC)
    try:
        return open_beneath(top, tuple(part for part in path.split("/") if part), _DIRECTORY)
    finally:
        os.close(top)


def open_workspace(working_directory: Path, identity: tuple[int, int] | None) -> int:
    """An `O_PATH` descriptor of the working directory, reached without any symbolic link.

    With `identity`, the directory must still be that `(st_dev, st_ino)`; otherwise
    (and when it is missing or a link now lies on its path) `WorkspaceChanged`.
    """
    root = os.path.abspath(working_directory)
    if identity is None:  # no checked identity to hold to: resolve the links given
        root = os.path.realpath(root)
    try:
        fd = open_directory(root)
        info = os.fstat(fd)
    except OSError as exc:
        raise WorkspaceChanged(changed_message(root, exc.strerror or str(exc))) from None
    if identity is not None and (info.st_dev, info.st_ino) != tuple(identity):
        os.close(fd)
        raise WorkspaceChanged(changed_message(root, "it is another directory now"))
    return fd


def changed_message(root: str | Path, why: str) -> str:
    return (
        f"the working directory {str(root)!r} is not the directory this session was created "
        f"on ({why}): it was removed, replaced or moved, or a symbolic link now lies on its "
        "path; nothing runs there any more: create a new session"
    )


def check_workspace(working_directory: Path, identity: tuple[int, int] | None) -> None:
    """Raise `WorkspaceChanged` unless the working directory is still what was checked."""
    os.close(open_workspace(working_directory, identity))


def make_parents(root_fd: int, parts: tuple[str, ...], owner: tuple[int, int] | None) -> int:
    """An `O_PATH` descriptor of directory `parts` beneath `root_fd`, creating what is missing.

    With `owner`, a directory created here is given to that (uid, gid).
    """
    current = os.dup(root_fd)
    try:
        for name in parts:
            try:
                following = open_beneath(current, (name,), _DIRECTORY)
            except FileNotFoundError:
                with suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=current)
                following = open_beneath(current, (name,), _DIRECTORY)
                if owner is not None:
                    made = open_beneath(current, (name,), os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fchown(made, *owner)
                    finally:
                        os.close(made)
            os.close(current)
            current = following
        return current
    except BaseException:
        os.close(current)
        raise


def can_switch_identity() -> bool:
    return os.geteuid() == 0 and _SYS_SETFSUID is not None and _SYS_SETFSGID is not None


def _setfs(number: int, value: int) -> int:
    return int(_libc.syscall(number, ctypes.c_int(value)))


@contextmanager
def acting_as(uid: int | None, gid: int | None) -> Iterator[None]:
    """File operations of this thread run as `uid`/`gid` (setfsuid/setfsgid) inside.

    Nothing changes when `uid` is None or 0, or the server is not root.
    """
    if uid is None or uid == 0 or not can_switch_identity():
        yield
        return
    assert _SYS_SETFSUID is not None and _SYS_SETFSGID is not None
    gid = uid if gid is None else gid
    old_gid = _setfs(_SYS_SETFSGID, gid)
    old_uid = _setfs(_SYS_SETFSUID, uid)
    try:
        if _setfs(_SYS_SETFSUID, -1) != uid or _setfs(_SYS_SETFSGID, -1) != gid:
            raise ToolError("the editor could not take the uid commands run as")
        yield
    finally:
        _setfs(_SYS_SETFSUID, old_uid)
        _setfs(_SYS_SETFSGID, old_gid)


# -- one file beneath the working directory, for the editor --------------------


class Target:
    """One path beneath the open working directory; each operation opens it afresh."""

    def __init__(
        self,
        root: int,
        parts: tuple[str, ...],
        shown: str,
        owner: tuple[int, int] | None,
        max_bytes: int,
    ) -> None:
        self.root = root
        self.parts = parts
        self.shown = shown
        self.owner = owner  # who gets what is created, when the thread cannot act as them
        self.max_bytes = max_bytes

    def open_existing(self, flags: int) -> int:
        try:
            return open_beneath(self.root, self.parts, flags)
        except FileNotFoundError:
            raise ToolError(f"{self.shown} does not exist") from None

    def kind(self) -> int | None:
        """The file's type and mode bits (`st_mode`); None if it does not exist."""
        try:
            fd = open_beneath(self.root, self.parts, os.O_PATH)
        except FileNotFoundError:
            return None
        try:
            return os.fstat(fd).st_mode
        finally:
            os.close(fd)

    def read(self) -> bytes:
        fd = self.open_existing(os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            return read_regular(fd, self.shown, self.max_bytes)
        finally:
            os.close(fd)

    def write(self, data: bytes, parents: bool = False) -> None:
        """Write `data` in place (the file keeps its inode and mode), creating it if missing."""
        *folders, name = self.parts
        if parents:
            directory = make_parents(self.root, tuple(folders), self.owner)
        else:
            directory = open_beneath(self.root, tuple(folders), os.O_PATH | os.O_DIRECTORY)
        try:
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY
            try:
                fd = open_beneath(directory, (name,), flags | os.O_CREAT | os.O_EXCL)
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
            except FileExistsError:
                fd = open_beneath(directory, (name,), flags | os.O_TRUNC)
        finally:
            os.close(directory)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ToolError(f"{self.shown} is not a regular file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def unlink(self) -> None:
        *folders, name = self.parts
        try:
            directory = open_beneath(self.root, tuple(folders), os.O_PATH | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        try:
            os.unlink(name, dir_fd=directory)
        except FileNotFoundError:
            pass  # (already gone: nothing to undo)
        finally:
            os.close(directory)


def failure_message(command: str, shown: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"`{command}` refused on {shown}: its path holds a symbolic link; {LINK_REFUSED}"
    if exc.errno == errno.EXDEV:
        return f"`{command}` refused on {shown}: it is outside the working directory"
    return f"`{command}` failed on {shown}: {exc.strerror or exc}"


def read_regular(fd: int, shown: str, max_bytes: int) -> bytes:
    """The whole regular file open at `fd` (text: no NUL byte), at most `max_bytes`."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ToolError(f"{shown} is not a regular file")
    if info.st_size > max_bytes:
        raise ToolError(
            f"{shown} is too large ({info.st_size} bytes, limit {max_bytes}); use the "
            "terminal (grep, sed -n, head) to inspect it"
        )
    chunks, size = [], 0
    while size <= max_bytes:  # (a file growing while read stops at the limit)
        chunk = os.read(fd, max(info.st_size - size, 0) + 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise ToolError(f"{shown} is too large (limit {max_bytes} bytes)")
    if b"\x00" in data:
        raise ToolError(f"{shown} looks like a binary file (it contains NUL bytes)")
    return data


# -- the previous, path-based check (kept for callers that only need a lexical answer) --


def resolve_in_workspace(working_directory: Path, path: str) -> Path:
    """Resolve `path` (relative to `working_directory`) to a real path inside it.

    Symlinks and `..` are resolved first, so a link pointing outside, or a new
    file under a symlinked directory pointing outside, is refused. An absolute
    path is accepted only if it resolves inside the working directory. Raises
    `ToolError` for anything that leaves it. (A check only: opening the answer
    later is a race; the editor uses `open_beneath`.)
    """
    if not isinstance(path, str) or not path:
        raise ToolError("path must be a non-empty string")
    if "\x00" in path:
        raise ToolError("path must not contain NUL characters")
    try:
        root = Path(working_directory).resolve()
        given = Path(path)
        target = given if given.is_absolute() else root / given
        resolved = target.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop
        raise ToolError(f"cannot resolve path {path!r}: {exc}") from exc
    if resolved != root and not resolved.is_relative_to(root):
        raise ToolError(
            f"path {path!r} resolves to {str(resolved)!r}, which is outside the working "
            f"directory {str(root)!r}; use a path inside the working directory"
        )
    return resolved
