"""Secrets masked in everything that leaves a task: `<secret:NAME>` for each value.

A `Redactor` holds one task's secrets (name -> value). `text` and `value`
mask whole strings and JSON-like data. Streamed text needs more: a value may
arrive split across two token deltas, so `stream` masks what it can and holds
back the end of the text while it could still be the start of a value (the
held part is sent with the next delta, or when anything else is logged). Files
(a task's diff) are masked in chunks the same way (`mask_file`).

Values shorter than `MIN_MASKED` characters are not masked (they would mask
half of every output); `POST /api/secrets` refuses them. Every value a runtime
loads is also registered for its logs (`logging.redact_secrets`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MIN_MASKED = 4
_LOGGED: dict[str, str] = {}  # every value loaded in this process -> its marker
_LOGGED_LOCK = threading.Lock()


def logged_values() -> dict[str, str]:
    with _LOGGED_LOCK:
        return dict(_LOGGED)


def _forms(value: str) -> set[str]:
    """The forms of `value` to mask: itself, as escaped inside JSON text (a tool call's
    arguments), and each of its lines (a diff prefixes every line), long enough ones."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    forms.update(line for line in value.splitlines() if line.strip())
    return {form for form in forms if len(form) >= MIN_MASKED}


class Redactor:
    def __init__(self, secrets: Mapping[str, str]) -> None:
        pairs = {}
        for name, value in secrets.items():
            for form in _forms(value):
                pairs.setdefault(form, f"<secret:{name}>")
        self._pairs = sorted(pairs.items(), key=lambda pair: -len(pair[0]))  # longest first
        with _LOGGED_LOCK:
            _LOGGED.update(self._pairs)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def text(self, text: str) -> str:
        for value, marker in self._pairs:
            if value in text:
                text = text.replace(value, marker)
        return text

    def value(self, data: Any) -> Any:
        """`data` (str, dict, list, ...) with every string masked."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {key: self.value(item) for key, item in data.items()}
        if isinstance(data, list | tuple):
            return [self.value(item) for item in data]
        return data

    def stream(self, held: str, text: str) -> tuple[str, str]:
        """(what may be sent now, what to hold back) of `held + text`, masked."""
        whole = self.text(held + text)
        keep = self._open_prefix(whole)
        return whole[: len(whole) - keep], whole[len(whole) - keep :]

    def _open_prefix(self, text: str) -> int:
        """Length of the longest end of `text` that begins some value (not all of it)."""
        longest = 0
        for value, _marker in self._pairs:
            for size in range(min(len(value) - 1, len(text)), longest, -1):
                if text.endswith(value[:size]):
                    longest = size
                    break
        return longest

    def trim_cut(self, head: str, tail: str) -> tuple[str, str]:
        """Output cut between `head` and `tail`: drop what could be part of a value
        across the cut (the end of `head` that begins one, the start of `tail` that
        ends one), which masking whole strings could not catch."""
        head = head[: len(head) - self._open_prefix(head)]
        cut = 0
        for value, _marker in self._pairs:
            for size in range(min(len(value) - 1, len(tail)), cut, -1):
                if tail.startswith(value[len(value) - size :]):
                    cut = size
                    break
        return head, tail[cut:]

    def mask_file(self, path: Path, chunk: int = 1 << 20) -> None:
        """Mask `path` in place, a chunk at a time (never whole in memory)."""
        if not self._pairs:
            return
        masked = path.with_name(path.name + ".masked")
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as source:
            descriptor = os.open(masked, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(
                descriptor, "w", encoding="utf-8", errors="surrogateescape", newline=""
            ) as out:
                held = ""
                while piece := source.read(chunk):
                    ready, held = self.stream(held, piece)
                    out.write(ready)
                out.write(held)
                out.flush()
                os.fsync(out.fileno())
        masked.replace(path)
