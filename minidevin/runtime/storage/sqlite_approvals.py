"""What the log says of one approval: for a decision sent while its task is not live."""

from __future__ import annotations

from minidevin.runtime.storage.sqlite_engine import SqliteEngine


class SqliteApprovals(SqliteEngine):
    """A part of `SqliteStore`."""

    async def approval_state(self, task_id: str, call_id: str) -> str | None:
        """None if the task's log never asked for `call_id`'s approval; else "pending",
        "approve" or "reject"."""
        rows = await self.fetch_all(
            "SELECT type, json_extract(data, '$.decision') AS decision FROM events "
            "WHERE task_id = ? AND type IN ('approval_request', 'approval_decision') "
            "AND json_extract(data, '$.call_id') = ? ORDER BY seq",
            (task_id, call_id),
        )
        if not rows:
            return None
        decided = [row["decision"] for row in rows if row["type"] == "approval_decision"]
        return decided[-1] if decided else "pending"
