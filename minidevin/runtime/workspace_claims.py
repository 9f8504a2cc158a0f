"""A user's claim on a working directory, with its refusals as the API's errors.

Every refusal but a malformed value (422) is the same 403, whether the directory
is missing, forbidden, or another user's: it tells nothing about the host.
"""

from __future__ import annotations

from minidevin.runtime.errors import BadRequest, Forbidden, ValidationFailed
from minidevin.runtime.tools.paths import WorkspaceChanged
from minidevin.runtime.workspace import CheckedDirectory, WorkspaceError, Workspaces


async def claim_working_directory(
    workspaces: Workspaces, user_id: str, raw: str, *, tenant: bool = True
) -> CheckedDirectory:
    """`Workspaces.claim`, refused with `Forbidden` (403) or `ValidationFailed` (422)."""
    try:
        return await workspaces.claim(user_id, raw, tenant=tenant)
    except WorkspaceError as exc:
        raise _workspace_refusal(exc) from None


async def working_directory_identity(
    workspaces: Workspaces, user_id: str, path: str, *, tenant: bool = True
) -> tuple[int, int]:
    """`Workspaces.identity`: refused as a claim is, or `WORKSPACE_CHANGED` (400)."""
    try:
        return await workspaces.identity(user_id, path, tenant=tenant)
    except WorkspaceError as exc:
        raise _workspace_refusal(exc) from None
    except WorkspaceChanged as exc:
        raise BadRequest(str(exc), code="WORKSPACE_CHANGED") from None


def _workspace_refusal(exc: WorkspaceError) -> Exception:
    """403 with the one `working_directory is not available`, or 422 for a malformed value."""
    if exc.code == "FORBIDDEN":
        return Forbidden(str(exc))
    return ValidationFailed(f"working_directory: {exc}")
