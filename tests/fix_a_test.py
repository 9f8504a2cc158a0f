"""The scripted model turns of the fix-a-test flow, shared by several tests."""

from __future__ import annotations

import sys

from scripted_provider import ScriptedTurn

RUN_TEST = f"{sys.executable} test_calc.py"


def fix_a_test_turns() -> list[ScriptedTurn]:
    return [
        ScriptedTurn(
            text="Let me analyze the failing test.",
            tool_calls=[
                (
                    "plan",
                    {
                        "steps": [
                            {"description": "Run the failing test", "status": "in_progress"},
                            {"description": "Fix add()", "status": "pending"},
                            {"description": "Run the test again", "status": "pending"},
                        ]
                    },
                ),
                ("terminal", {"command": RUN_TEST}),
            ],
        ),
        ScriptedTurn(
            text="add() subtracts; fix it.",
            tool_calls=[
                (
                    "editor",
                    {
                        "command": "str_replace",
                        "path": "calc.py",
                        "old_str": "return a - b",
                        "new_str": "return a + b",
                    },
                ),
                ("terminal", {"command": RUN_TEST}),
            ],
        ),
        ScriptedTurn(
            text="The test passes now.",
            tool_calls=[
                (
                    "plan",
                    {
                        "steps": [
                            {"description": "Run the failing test", "status": "completed"},
                            {"description": "Fix add()", "status": "completed"},
                            {"description": "Run the test again", "status": "completed"},
                        ]
                    },
                ),
                ("finish", {"summary": "Fixed add() to return a + b", "success": True}),
            ],
        ),
    ]
