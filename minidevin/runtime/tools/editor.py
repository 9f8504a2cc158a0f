"""The `editor` tool: view, create and edit files, with undo (like Anthropic's text editor)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from minidevin.runtime.tools.base import ToolContext, ToolError, ToolResult
from minidevin.runtime.tools.paths import display_path, resolve_in_workspace

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_HISTORY_PER_FILE = 50
MAX_LISTING_ENTRIES = 1000
SNIPPET_LINES = 4
_COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")


class EditorTool:
    """File viewer and editor; one instance per task, since it holds the undo history."""

    name = "editor"
    description = (
        "View, create and edit files in the working directory. Paths are relative to it.\n"
        "* `view`: a file is shown with line numbers (like `cat -n`); `view_range` "
        "[start, end] (1-based, end -1 = to the end) limits the lines shown. A directory "
        "lists its non-hidden files and directories up to 2 levels deep.\n"
        "* `create`: write `file_text` to `path` (parent directories are created; an "
        "existing file is overwritten).\n"
        "* `str_replace`: replace `old_str` with `new_str` (default empty). `old_str` must "
        "match the file exactly, including whitespace and indentation, and occur exactly "
        "once: include enough surrounding lines to make it unique.\n"
        "* `insert`: insert `new_str` as new line(s) after line `insert_line` "
        "(0 = at the beginning of the file).\n"
        "* `undo_edit`: revert the last edit made to `path` with this tool."
    )
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "command": {"type": "string", "enum": list(_COMMANDS), "description": "What to do."},
            "path": {"type": "string", "description": "File or directory path."},
            "file_text": {"type": "string", "description": "`create`: the file's content."},
            "old_str": {"type": "string", "description": "`str_replace`: exact text to replace."},
            "new_str": {
                "type": "string",
                "description": "`str_replace`: replacement text; `insert`: text to insert.",
            },
            "insert_line": {
                "type": "integer",
                "description": "`insert`: insert after this line (0 = beginning of file).",
            },
            "view_range": {
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 2,
                "maxItems": 2,
                "description": "`view`: [start, end] line range, 1-based; end -1 = to the end.",
            },
        },
        "required": ["command", "path"],
        "additionalProperties": False,
    }

    def __init__(self) -> None:
        self._history: dict[Path, list[bytes | None]] = {}
        self._lock = threading.Lock()

    def run(self, arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        """Execute one editor command; raises `ToolError` for invalid requests."""
        command = arguments.get("command")
        if command not in _COMMANDS:
            raise ToolError(f"`command` must be one of {', '.join(_COMMANDS)}; got {command!r}")
        path = resolve_in_workspace(context.working_directory, _string(arguments, "path"))
        shown = display_path(context.working_directory, path)
        handler = getattr(self, f"_{command}")
        try:
            with self._lock:
                output = handler(arguments, path, shown, context.output_limit)
        except OSError as exc:
            raise ToolError(f"`{command}` failed on {shown}: {exc.strerror or exc}") from exc
        return ToolResult(output=output, success=True)

    def _view(self, arguments: dict[str, Any], path: Path, shown: str, limit: int) -> str:
        view_range = arguments.get("view_range")
        if path.is_dir():
            if view_range is not None:
                raise ToolError("`view_range` is not allowed when `path` is a directory")
            return _list_directory(path, shown)
        lines = _lines(_read(path, shown))
        if not lines:
            return f"{shown} is empty."
        start, end = 1, len(lines)
        if view_range is not None:
            start, end = _check_range(view_range, len(lines))
        header = f"Here's the result of running `cat -n` on {shown}:\n"
        body, shown_end = _numbered(lines[start - 1 : end], start, limit)
        if shown_end < end:
            body += (
                f"[output truncated: showing lines {start}-{shown_end} of {len(lines)}; "
                "use `view_range` to see the rest]\n"
            )
        return header + body

    def _create(self, arguments: dict[str, Any], path: Path, shown: str, limit: int) -> str:
        text = _string(arguments, "file_text", allow_empty=True)
        if path.is_dir():
            raise ToolError(f"{shown} is a directory; `create` needs a file path")
        previous = _read_bytes(path, shown) if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, text)
        self._remember(path, previous)
        verb = "created" if previous is None else "overwritten"
        return f"File {verb} successfully at: {shown} ({len(_lines(text))} lines)"

    def _str_replace(self, arguments: dict[str, Any], path: Path, shown: str, limit: int) -> str:
        old = _string(arguments, "old_str")
        new = _string(arguments, "new_str", allow_empty=True, default="")
        original = _read(path, shown)
        positions = _occurrences(original, old)
        if not positions:
            raise ToolError(
                f"No replacement was performed: `old_str` does not occur in {shown}. It must "
                "match exactly, including whitespace and indentation; view the file to check."
            )
        if len(positions) > 1:
            numbers = sorted({original.count("\n", 0, p) + 1 for p in positions})
            raise ToolError(
                f"No replacement was performed: `old_str` occurs {len(positions)} times in "
                f"{shown} (starting on lines {', '.join(map(str, numbers))}). Include more "
                "surrounding context to make it unique."
            )
        at = positions[0]
        updated = original[:at] + new + original[at + len(old) :]
        _write(path, updated)
        self._remember(path, _encode(original))
        first = original.count("\n", 0, at) + 1
        return _edited(shown, updated, first, first + new.count("\n"))

    def _insert(self, arguments: dict[str, Any], path: Path, shown: str, limit: int) -> str:
        new = _string(arguments, "new_str", allow_empty=True)
        line = arguments.get("insert_line")
        if isinstance(line, bool) or not isinstance(line, int):
            raise ToolError("`insert_line` is required and must be an integer")
        original = _read(path, shown)
        lines = original.split("\n")
        count = len(_lines(original))
        if not 0 <= line <= count:
            raise ToolError(f"`insert_line` must be between 0 and {count} (the number of lines)")
        newline = "\r\n" if "\r\n" in original else "\n"
        offset = sum(len(part) + 1 for part in lines[:line])
        if offset > len(original):  # after a last line that has no final newline
            updated = original + newline + new
        else:
            suffix = "" if new.endswith("\n") else newline
            updated = original[:offset] + new + suffix + original[offset:]
        _write(path, updated)
        self._remember(path, _encode(original))
        return _edited(shown, updated, line + 1, line + 1 + new.count("\n"))

    def _undo_edit(self, arguments: dict[str, Any], path: Path, shown: str, limit: int) -> str:
        history = self._history.get(path)
        if not history:
            raise ToolError(f"No edit to undo for {shown}")
        previous = history.pop()
        if previous is None:
            path.unlink(missing_ok=True)
            return f"Undid the creation of {shown}: the file was removed."
        path.write_bytes(previous)
        count = len(_lines(_decode(previous)))
        return f"Last edit to {shown} undone; it has {count} lines again."

    def _remember(self, path: Path, previous: bytes | None) -> None:
        history = self._history.setdefault(path, [])
        history.append(previous)
        del history[:-MAX_HISTORY_PER_FILE]


def _string(
    arguments: dict[str, Any], key: str, allow_empty: bool = False, default: str | None = None
) -> str:
    value = arguments.get(key, default)
    if not isinstance(value, str) or (not value and not allow_empty):
        kind = "a string" if allow_empty else "a non-empty string"
        raise ToolError(f"`{key}` is required and must be {kind}")
    return value


def _read_bytes(path: Path, shown: str) -> bytes:
    if not path.exists():
        raise ToolError(f"{shown} does not exist")
    if not path.is_file():
        raise ToolError(f"{shown} is not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ToolError(
            f"{shown} is too large ({size} bytes, limit {MAX_FILE_BYTES}); use the terminal "
            "(grep, sed -n, head) to inspect it"
        )
    data = path.read_bytes()
    if b"\x00" in data:
        raise ToolError(f"{shown} looks like a binary file (it contains NUL bytes)")
    return data


def _read(path: Path, shown: str) -> str:
    return _decode(_read_bytes(path, shown))


# Text is kept with undecodable bytes as surrogates, so writing it back is byte-exact.
def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def _write(path: Path, text: str) -> None:
    path.write_bytes(_encode(text))


def _printable(text: str) -> str:
    return _encode(text).decode("utf-8", errors="replace")


def _lines(text: str) -> list[str]:
    """The file's lines (split on "\\n" only; a final newline ends the last line)."""
    if not text:
        return []
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def _numbered(lines: list[str], first: int, limit: int = -1) -> tuple[str, int]:
    """Lines numbered `cat -n` style, stopping before `limit` characters (-1: no limit).

    Returns the text and the number of the last line shown.
    """
    parts, size, last = [], 0, first - 1
    for n, line in enumerate(lines, first):
        part = f"{n:6}\t{_printable(line)}\n"
        if parts and 0 <= limit < size + len(part):
            break
        parts.append(part)
        size += len(part)
        last = n
    return "".join(parts), last


def _occurrences(text: str, needle: str) -> list[int]:
    positions, at = [], text.find(needle)
    while at != -1:
        positions.append(at)
        at = text.find(needle, at + 1)
    return positions


def _check_range(view_range: Any, count: int) -> tuple[int, int]:
    if (
        not isinstance(view_range, list)
        or len(view_range) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)
    ):
        raise ToolError("`view_range` must be a list of two integers [start, end]")
    start, end = view_range
    if not 1 <= start <= max(count, 1):
        raise ToolError(f"`view_range` start {start} must be between 1 and {count}")
    if end == -1 or end > count:
        end = count
    if end < start and count:
        raise ToolError(f"`view_range` end {end} must be -1 or not less than start {start}")
    return start, end


def _edited(shown: str, text: str, first: int, last: int) -> str:
    lines = _lines(text)
    start = max(first - SNIPPET_LINES, 1)
    end = min(last + SNIPPET_LINES, len(lines))
    return (
        f"The file {shown} has been edited. Here's the result of running `cat -n` on a "
        f"snippet of {shown}:\n{_numbered(lines[start - 1 : end], start)[0]}"
        "Review the changes and make sure they are as expected. Edit the file again if "
        "necessary."
    )


def _list_directory(root: Path, shown: str) -> str:
    entries: list[str] = []

    def walk(directory: Path, prefix: str, depth: int) -> None:
        try:
            children = sorted(directory.iterdir(), key=lambda p: p.name)
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or len(entries) >= MAX_LISTING_ENTRIES:
                continue
            is_dir = child.is_dir()
            entries.append(f"{prefix}{child.name}{'/' if is_dir else ''}")
            # Do not follow symlinked directories: they may point outside the workspace.
            if is_dir and depth < 2 and not child.is_symlink():
                walk(child, f"{prefix}{child.name}/", depth + 1)

    walk(root, "", 1)
    header = f"Files and directories up to 2 levels deep in {shown}, excluding hidden items:\n"
    body = "\n".join(entries) if entries else "(empty directory)"
    if len(entries) >= MAX_LISTING_ENTRIES:
        body += f"\n[listing truncated at {MAX_LISTING_ENTRIES} entries]"
    return header + body
