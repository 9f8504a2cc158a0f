"""Text PostgreSQL cannot hold as it is, stored anyway and given back unchanged.

PostgreSQL refuses the NUL character (U+0000) in any text value, where SQLite
stores it: a session name or a task description with a NUL would fail on
PostgreSQL alone. The PostgreSQL store escapes text on its way in and restores
it on its way out, with SOH (U+0001) as the escape character:

    U+0000 -> U+0001 "0"        U+0001 -> U+0001 "1"        anything else as it is

The codes are prefix-free and ordered like the characters they stand for, so
equality, `ORDER BY` and prefix ranges on escaped text give what they give on
the original (byte-wise, `COLLATE "C"`). JSON text (events, plans, results)
never holds a raw control character (`json.dumps` writes `\\u0000`), so the
escape leaves it alone; the few values that hold one cost a `replace`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_NUL, _ESCAPE = "\x00", "\x01"
_CODE = re.compile("\x01([01])")
_RESTORE = {"0": _NUL, "1": _ESCAPE}


def store_text(text: str) -> str:
    """`text` as the database holds it (unchanged unless it has U+0000 or U+0001)."""
    if _NUL in text or _ESCAPE in text:
        return text.replace(_ESCAPE, "\x011").replace(_NUL, "\x010")
    return text


def stored_text(text: str) -> str:
    """The text `store_text` was given."""
    if _ESCAPE in text:
        return _CODE.sub(lambda code: _RESTORE[code.group(1)], text)
    return text


def store_params(params: Sequence[Any]) -> Sequence[Any]:
    """A statement's parameters with their text (and the text in lists of it) escaped."""
    if not any(isinstance(value, str | list | tuple) for value in params):
        return params
    return [_store_value(value) for value in params]


def _store_value(value: Any) -> Any:
    if isinstance(value, str):
        return store_text(value)
    if isinstance(value, list | tuple):
        return [store_text(item) if isinstance(item, str) else item for item in value]
    return value


def restore_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows read back, their text as it was given (in place)."""
    for row in rows:
        for name, value in row.items():
            if type(value) is str and _ESCAPE in value:
                row[name] = stored_text(value)
    return rows
