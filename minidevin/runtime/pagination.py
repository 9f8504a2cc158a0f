"""Keyset pagination for list calls: a page of rows and an opaque cursor to the next.

A cursor names a position, (created_at, rowid) of the last row of a page, in one
kind of list (sessions or tasks); it is not a capability: every page is read
with the caller's own filter (their sessions, a session they own), so a cursor
taken from another list, or another user's, positions within the caller's own
rows and reveals nothing else. Rows inserted meanwhile never shift a page:
each page starts strictly after the previous page's last row.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from minidevin.runtime.errors import ValidationFailed

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_CURSOR_CHARS = 512
Position = tuple[str, int]  # (created_at, rowid) of the last row of the previous page


class Page(list[T], Generic[T]):
    """A list of rows; `next_cursor` reads the following page (None: this is the last)."""

    next_cursor: str | None = None

    def __init__(self, rows: list[T], next_cursor: str | None = None) -> None:
        super().__init__(rows)
        self.next_cursor = next_cursor


def check_limit(limit: int | None) -> int | None:
    """`limit` if it is None or 1..MAX_LIMIT; 422 otherwise."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return limit


def parse_limit(raw: str | None) -> int:
    """A `limit` query parameter: DEFAULT_LIMIT when absent, 422 when not 1..MAX_LIMIT."""
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4):
        raise ValidationFailed(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return check_limit(int(raw)) or DEFAULT_LIMIT


def encode_cursor(kind: str, created_at: str, rowid: int) -> str:
    raw = json.dumps([kind, created_at, rowid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None) -> Position | None:
    """The position a cursor of this `kind` names (None: from the start); 422 if it is not one."""
    if cursor is None:
        return None
    bad = ValidationFailed("cursor is not valid (pass X-Next-Cursor of the previous page)")
    if not cursor or len(cursor) > MAX_CURSOR_CHARS or not cursor.isascii():
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if (
        not isinstance(data, list)
        or len(data) != 3
        or data[0] != kind
        or not isinstance(data[1], str)
        or type(data[2]) is not int
        or not 0 <= data[2] < 2**63
    ):
        raise bad
    return data[1], data[2]


def page(
    kind: str, rows: list[dict[str, Any]], limit: int | None, make: Callable[..., T]
) -> Page[T]:
    """`rows` (read with `limit + 1`, each with its `rowid`) cut to `limit`, made into
    models by `make`, with the cursor after the last one kept."""
    more = limit is not None and len(rows) > limit
    rows = rows[:limit] if more else rows
    cursor = encode_cursor(kind, rows[-1]["created_at"], rows[-1]["rowid"]) if more else None
    return Page([make(**{k: v for k, v in row.items() if k != "rowid"}) for row in rows], cursor)
