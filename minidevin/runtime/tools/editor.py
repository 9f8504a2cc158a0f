"""The `editor` tool: view, create and edit files, with undo (like Anthropic's text editor).

Every file is opened beneath the working directory's descriptor, never by a path
checked first (see `paths`): symbolic links are not followed, even inside the
workspace ("the editor does not follow symbolic links; use the terminal").
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from minidevin.runtime.tools.base import ToolArguments, ToolContext, ToolError, ToolResult
from minidevin.runtime.tools.paths import (
    Target,
    acting_as,
    can_switch_identity,
    failure_message,
    open_beneath,
    open_workspace,
    read_regular,
    split_path,
)

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_HISTORY_PER_FILE = 50
MAX_LISTING_ENTRIES = 1000
SNIPPET_LINES = 4


class EditorArguments(ToolArguments):
    command: Literal["view", "create", "str_replace", "insert", "undo_edit"] = Field(
        description="What to do."
    )
    path: str = Field(min_length=1, description="File or directory path.")
    file_text: str | None = Field(None, description="`create`: the file's content.")
    old_str: str | None = Field(None, description="`str_replace`: exact text to replace.")
    new_str: str | None = Field(
        None, description="`str_replace`: replacement text; `insert`: text to insert."
    )
    insert_line: int | None = Field(
        None, description="`insert`: insert after this line (0 = beginning of file)."
    )
    view_range: list[int] | None = Field(
        None,
        description="`view`: [start, end] line range, 1-based; end -1 = to the end.",
        json_schema_extra={"minItems": 2, "maxItems": 2},
    )

    @field_validator("view_range")
    @classmethod
    def _two_integers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(value) != 2:
            raise ValueError("must be a list of two integers [start, end]")
        return value

    @model_validator(mode="after")
    def _what_the_command_needs(self) -> Self:
        needs = {
            "create": ("file_text",),
            "str_replace": ("old_str",),
            "insert": ("insert_line", "new_str"),
        }.get(self.command, ())
        for name in needs:
            if getattr(self, name) is None:
                raise ValueError(f"`{name}` is required for `{self.command}`")
        if self.command == "str_replace" and not self.old_str:
            raise ValueError("`old_str` must not be empty")
        return self


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
    arguments = EditorArguments

    def __init__(self) -> None:
        self._history: dict[tuple[str, ...], list[bytes | None]] = {}
        self._lock = threading.Lock()

    def run(
        self, arguments: Mapping[str, Any] | EditorArguments, context: ToolContext
    ) -> ToolResult:
        """Execute one editor command; raises `ToolError` for invalid requests.

        The working directory is opened once (and checked to be the session's), then
        every file is opened beneath it, as the uid commands run as (see `paths`).
        """
        arguments = EditorArguments.of(arguments, self.name)
        command = arguments.command
        parts = split_path(context.working_directory, arguments.path)
        shown = "/".join(parts) or "."
        handler = getattr(self, f"_{command}")
        switch = context.uid is not None and context.uid != 0 and os.geteuid() == 0
        owner = None  # who gets what the editor creates, when the thread cannot act as them
        if switch and not can_switch_identity():
            assert context.uid is not None
            owner = (context.uid, context.uid if context.gid is None else context.gid)
        root = open_workspace(context.working_directory, context.workspace_identity)
        try:
            with self._lock, acting_as(context.uid if switch else None, context.gid):
                output = handler(
                    arguments,
                    Target(root, parts, shown, owner, MAX_FILE_BYTES),
                    context.output_limit,
                )
        except OSError as exc:
            raise ToolError(failure_message(command, shown, exc)) from exc
        finally:
            os.close(root)
        return ToolResult(output=output, success=True)

    def _view(self, arguments: EditorArguments, target: Target, limit: int) -> str:
        view_range = arguments.view_range
        shown = target.shown
        fd = target.open_existing(os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                if view_range is not None:
                    raise ToolError("`view_range` is not allowed when `path` is a directory")
                return _list_directory(fd, shown)
            lines = _lines(_decode(read_regular(fd, shown, MAX_FILE_BYTES)))
        finally:
            os.close(fd)
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

    def _create(self, arguments: EditorArguments, target: Target, limit: int) -> str:
        text = arguments.file_text or ""
        kind = target.kind()
        if not target.parts or (kind is not None and stat.S_ISDIR(kind)):
            raise ToolError(f"{target.shown} is a directory; `create` needs a file path")
        previous = target.read() if kind is not None else None
        target.write(_encode(text), parents=True)
        self._remember(target.parts, previous)
        verb = "created" if previous is None else "overwritten"
        return f"File {verb} successfully at: {target.shown} ({len(_lines(text))} lines)"

    def _str_replace(self, arguments: EditorArguments, target: Target, limit: int) -> str:
        old = arguments.old_str or ""
        new = arguments.new_str or ""
        shown = target.shown
        original = _decode(target.read())
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
        target.write(_encode(updated))
        self._remember(target.parts, _encode(original))
        first = original.count("\n", 0, at) + 1
        return _edited(shown, updated, first, first + new.count("\n"))

    def _insert(self, arguments: EditorArguments, target: Target, limit: int) -> str:
        new = arguments.new_str or ""
        line = arguments.insert_line or 0
        original = _decode(target.read())
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
        target.write(_encode(updated))
        self._remember(target.parts, _encode(original))
        return _edited(target.shown, updated, line + 1, line + 1 + new.count("\n"))

    def _undo_edit(self, arguments: EditorArguments, target: Target, limit: int) -> str:
        history = self._history.get(target.parts)
        if not history:
            raise ToolError(f"No edit to undo for {target.shown}")
        previous = history.pop()
        if previous is None:
            target.unlink()
            return f"Undid the creation of {target.shown}: the file was removed."
        target.write(previous)
        count = len(_lines(_decode(previous)))
        return f"Last edit to {target.shown} undone; it has {count} lines again."

    def _remember(self, parts: tuple[str, ...], previous: bytes | None) -> None:
        history = self._history.setdefault(parts, [])
        history.append(previous)
        del history[:-MAX_HISTORY_PER_FILE]


# Text is kept with undecodable bytes as surrogates, so writing it back is byte-exact.
def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


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


def _check_range(view_range: list[int], count: int) -> tuple[int, int]:
    start, end = view_range  # two integers (`EditorArguments`)
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


def _list_directory(directory: int, shown: str) -> str:
    """Two levels below the open `directory`, entered without following any link."""
    entries: list[str] = []

    def walk(fd: int, prefix: str, depth: int) -> None:
        try:
            with os.scandir(fd) as listing:
                children = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or len(entries) >= MAX_LISTING_ENTRIES:
                continue
            try:
                is_dir = child.is_dir(follow_symlinks=False)  # a link is listed, not entered
            except OSError:
                is_dir = False
            entries.append(f"{prefix}{child.name}{'/' if is_dir else ''}")
            if not is_dir or depth >= 2:
                continue
            try:
                inner = open_beneath(fd, (child.name,), os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                walk(inner, f"{prefix}{child.name}/", depth + 1)
            finally:
                os.close(inner)

    walk(directory, "", 1)
    header = f"Files and directories up to 2 levels deep in {shown}, excluding hidden items:\n"
    body = "\n".join(entries) if entries else "(empty directory)"
    if len(entries) >= MAX_LISTING_ENTRIES:
        body += f"\n[listing truncated at {MAX_LISTING_ENTRIES} entries]"
    return header + body
