"""What a task needs before it is handed to its session: a sandbox when one is required,
a configured model, the session's working directory still the one it claimed; and the
`TaskSpec` it then runs with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minidevin.actors.messages import TaskSpec
from minidevin.runtime import schemas
from minidevin.runtime.errors import BadRequest, ValidationFailed
from minidevin.runtime.providers.base import ProviderError
from minidevin.runtime.providers.registry import ProviderRegistry, UnknownModel
from minidevin.runtime.settings import Settings
from minidevin.runtime.tools.sandbox import SandboxUnavailable, sandbox_status
from minidevin.runtime.workspace import Workspaces
from minidevin.runtime.workspace_claims import working_directory_identity


class TaskAdmission:
    def __init__(
        self, settings: Settings, providers: ProviderRegistry, workspaces: Workspaces
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.workspaces = workspaces

    async def admit(
        self, session: dict[str, Any], model: str | None, local_user: str | None
    ) -> tuple[str, tuple[int, int]]:
        """The task's model id and its working directory's identity, or the API error.

        `local_user` is the embedding's own user (not a tenant), if it has one yet.
        """
        self.check_sandbox()
        model_id = await self.configured_model(model)
        identity = await working_directory_identity(
            self.workspaces,
            session["user_id"],
            session["working_directory"],
            tenant=session["user_id"] != local_user,
        )
        return model_id, identity

    def check_sandbox(self) -> None:
        if self.settings.sandbox == "required" and not (sandbox := sandbox_status()).works:
            raise SandboxUnavailable(
                f"sandbox=required but the command sandbox is unavailable: {sandbox.reason}"
            )

    async def configured_model(self, requested: str | None) -> str:
        """`requested`, or the default model; configured, or the API error."""
        if not requested or requested.startswith("ollama/"):
            await self.providers.refresh()  # (asks the Ollama server; only when it matters)
        requested = requested or self.settings.default_model or self.providers.default_model()
        try:
            return self.providers.check_configured(requested).id
        except UnknownModel as exc:
            raise ValidationFailed(f"model: {exc}") from None
        except ProviderError as exc:
            raise BadRequest(exc.message, code=exc.code) from None


def new_spec(
    task_id: str,
    session: dict[str, Any],
    request: schemas.TaskRequest,
    model: str,
    identity: tuple[int, int],
    settings: Settings,
) -> TaskSpec:
    """What a new task runs with."""
    return TaskSpec(
        task_id,
        session["id"],
        request.description,
        model,
        request.run_mode,
        request.max_iterations or settings.max_iterations,
        Path(session["working_directory"]),
        request.max_cost_usd,
        user_id=session["user_id"],
        workspace_identity=identity,
        context=request.context,
        approval_policy=request.approval_policy or session["approval_policy"],
    )
