"""Keep every path a tool touches inside the task's working directory."""

from __future__ import annotations

from pathlib import Path

from minidevin.runtime.tools.base import ToolError


def resolve_in_workspace(working_directory: Path, path: str) -> Path:
    """Resolve `path` (relative to `working_directory`) to a real path inside it.

    Symlinks and `..` are resolved first, so a link pointing outside, or a new
    file under a symlinked directory pointing outside, is refused. An absolute
    path is accepted only if it resolves inside the working directory. Raises
    `ToolError` for anything that leaves it.
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


def display_path(working_directory: Path, resolved: Path) -> str:
    """`resolved` shown relative to the working directory ("." for the directory itself)."""
    root = Path(working_directory).resolve()
    try:
        relative = resolved.relative_to(root)
    except ValueError:
        return str(resolved)
    return str(relative) if relative.parts else "."
