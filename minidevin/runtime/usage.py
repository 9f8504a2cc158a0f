"""`UsageMeter`: a task's token usage, what it cost, and whether that passed its budget."""

from __future__ import annotations

from typing import Any

from minidevin.runtime.providers.base import Usage


class UsageMeter:
    """The tokens of a task's model turns so far and their cost, at the model's price if known."""

    def __init__(self, price: tuple[float, float] | None) -> None:
        self.price = price  # USD per million (input, output) tokens
        self.usage = Usage()
        self.cost_usd = 0.0

    def restore(self, usage: dict[str, Any]) -> None:
        """Go on from a resumed task's `usage` so far (its log's latest `usage` event)."""
        self.usage = Usage(
            usage.get("prompt_tokens", 0),
            usage.get("completion_tokens", 0),
            bool(usage.get("estimated", False)),
        )
        self.cost_usd = float(usage.get("cost_usd", 0.0))

    def add(self, turn: Usage) -> None:
        """Count one model turn's tokens, and their cost."""
        self.usage = Usage(
            self.usage.prompt_tokens + turn.prompt_tokens,
            self.usage.completion_tokens + turn.completion_tokens,
            self.usage.estimated or turn.estimated,  # (any turn counted by us: the sum is too)
        )
        if self.price is not None:
            rate_in, rate_out = self.price
            self.cost_usd += (
                turn.prompt_tokens * rate_in + turn.completion_tokens * rate_out
            ) / 1_000_000

    def over_budget(self, budget: float | None) -> str | None:
        """Why the task must stop once its cost passed `budget` (USD); None while it has not."""
        if budget is not None and self.cost_usd > budget:
            return f"Cost ${self.cost_usd:.4f} exceeded the budget ${budget}"
        return None

    def as_dict(self) -> dict[str, Any]:
        """The `usage` of the task's row, events and trajectory."""
        usage: dict[str, Any] = {
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }
        if self.usage.estimated:
            usage["estimated"] = True
        return usage
