"""minidevin: an actor-based runtime for autonomous coding agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "1.0.0"
__all__ = ["BlockingRuntime", "Runtime", "Settings", "__version__"]

if TYPE_CHECKING:
    from minidevin.api import Runtime
    from minidevin.blocking import BlockingRuntime
    from minidevin.runtime.settings import Settings


def __getattr__(name: str) -> Any:
    """Import lazily, so `import minidevin` stays cheap."""
    if name == "Runtime":
        from minidevin.api import Runtime

        return Runtime
    if name == "BlockingRuntime":
        from minidevin.blocking import BlockingRuntime

        return BlockingRuntime
    if name == "Settings":
        from minidevin.runtime.settings import Settings

        return Settings
    raise AttributeError(name)
