"""Which models exist, which providers are configured, and how to build a `Model`.

A model id is a catalog id (`gpt-4o`, `claude-3-5-sonnet-20241022`) or
`provider/model` (`openai/gpt-4o-mini`, `azure/<deployment>`, `ollama/llama3.2`).

`replay:PATH` reads any local file by default (a registry built by
`minidevin run` or an embedding program serves the person running it); the
HTTP app calls `restrict_replay(settings.replay_dir)`, after which recordings
come only from that directory (none when it is unset), checked at every read.
Credentials come from each SDK's standard environment variables. The SDKs'
own retries are off: `retry.stream_with_retries` retries whole turns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import aiohttp
import structlog

from minidevin.runtime.providers.base import Model, ProviderError
from minidevin.runtime.providers.replay import PREFIX as REPLAY_PREFIX
from minidevin.runtime.providers.replay import (
    REFUSED,
    ReplayModel,
    open_beneath,
    read_beneath,
    replay_path,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

PROVIDERS: dict[str, str] = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "ollama": "Ollama",
    "azure": "Azure OpenAI",
}
# the order in which a default model is picked among configured providers
DEFAULT_ORDER = ("openai", "anthropic", "azure", "ollama")
OLLAMA_DEFAULT_HOST = "http://127.0.0.1:11434"
OLLAMA_CACHE_SECONDS = 15.0
REQUIRED_ENV = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "azure": ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION"),
}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    provider: str
    context_window: int
    supports_vision: bool = True
    supports_function_calling: bool = True


CATALOG: tuple[ModelInfo, ...] = (
    ModelInfo("gpt-4o", "GPT-4o", "openai", 128_000),
    ModelInfo("gpt-4o-mini", "GPT-4o mini", "openai", 128_000),
    ModelInfo("gpt-4.1", "GPT-4.1", "openai", 1_047_576),
    ModelInfo("gpt-4.1-mini", "GPT-4.1 mini", "openai", 1_047_576),
    ModelInfo("o3-mini", "o3-mini", "openai", 200_000, supports_vision=False),
    ModelInfo("claude-3-5-sonnet-20241022", "Claude 3.5 Sonnet", "anthropic", 200_000),
    ModelInfo("claude-3-5-haiku-20241022", "Claude 3.5 Haiku", "anthropic", 200_000),
    ModelInfo("claude-3-7-sonnet-20250219", "Claude 3.7 Sonnet", "anthropic", 200_000),
)
# USD per million tokens: (input, output); MINIDEVIN_MODEL_PRICES overrides.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "o3-mini": (1.10, 4.40),
    "claude-3-5-sonnet-20241022": (3.00, 15.00),
    "claude-3-5-haiku-20241022": (0.80, 4.00),
    "claude-3-7-sonnet-20250219": (3.00, 15.00),
}


class UnknownModel(ValueError):
    """A model id that no catalog entry or `provider/` prefix matches."""


class ProviderRegistry:
    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        timeout: float = 600.0,
        azure_deployments: tuple[str, ...] = (),
        prices: Mapping[str, tuple[float, float]] | None = None,
        context_windows: Mapping[str, int] | None = None,
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.timeout = timeout
        self.azure_deployments = azure_deployments
        self.prices = {**PRICES, **(prices or {})}
        self.context_windows = dict(context_windows or {})
        self._ollama_models: tuple[str, ...] | None = None  # None: not answering
        self._ollama_checked = float("-inf")
        self._custom: dict[str, tuple[ModelInfo, Callable[[], Model]]] = {}
        self.replay_restricted = False
        self.replay_dir: Path | None = None

    def restrict_replay(self, replay_dir: Path | None) -> None:
        """From now on `replay:` reads only regular files of <= 10 MB beneath
        `replay_dir` (none when None), and every refusal is the same message."""
        self.replay_restricted = True
        self.replay_dir = replay_dir

    def register(
        self, model_id: str, factory: Callable[[], Model], *, context_window: int = 128_000
    ) -> ModelInfo:
        """Add a model of your own (provider `custom`); `factory` builds one per task."""
        info = ModelInfo(model_id, model_id, "custom", context_window)
        self._custom[model_id] = (info, factory)
        return info

    # -- configuration -----------------------------------------------------------------

    @property
    def ollama_host(self) -> str:
        return (self.environ.get("OLLAMA_HOST") or OLLAMA_DEFAULT_HOST).rstrip("/")

    def configured(self, provider: str) -> bool:
        if provider == "ollama":
            return self._ollama_models is not None
        return not self.missing_settings(provider)

    def missing_settings(self, provider: str) -> list[str]:
        return [name for name in REQUIRED_ENV.get(provider, ()) if not self.environ.get(name)]

    async def refresh(self) -> None:
        """Ask the Ollama server for its models, at most every few seconds."""
        if time.monotonic() - self._ollama_checked < OLLAMA_CACHE_SECONDS:
            return
        self._ollama_checked = time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=1.5)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(f"{self.ollama_host}/api/tags") as response,
            ):
                response.raise_for_status()
                payload = await response.json(content_type=None)
            self._ollama_models = tuple(
                str(model["name"]) for model in payload.get("models", []) if "name" in model
            )
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, TypeError, KeyError):
            self._ollama_models = None

    # -- the catalog ---------------------------------------------------------------------

    def models(self, provider: str | None = None) -> list[ModelInfo]:
        listed = list(CATALOG)
        listed += [
            ModelInfo(f"azure/{name}", name, "azure", 128_000) for name in self.azure_deployments
        ]
        listed += [
            ModelInfo(f"ollama/{name}", name, "ollama", 128_000, supports_vision=False)
            for name in self._ollama_models or ()
        ]
        return [self._with_overrides(m) for m in listed if provider in (None, m.provider)]

    def resolve(self, model_id: str) -> ModelInfo:
        """The catalog entry for `model_id`; `UnknownModel` if there is none.

        `replay:PATH` resolves to an absolute path (relative to the current
        directory), so the id a task keeps works from anywhere.
        """
        if model_id in self._custom:
            return self._custom[model_id][0]
        if model_id.startswith(REPLAY_PREFIX):
            path = replay_path(model_id)
            if not path:
                raise UnknownModel("replay: needs a path, as in replay:path/to/trajectory.json")
            if self.replay_restricted:  # lexical only: the file is checked when opened
                base = self.replay_dir or Path("/")
                absolute = os.path.normpath(os.path.join(base, path))
            else:
                absolute = str(Path(path).expanduser().resolve())
            return ModelInfo(
                f"{REPLAY_PREFIX}{absolute}", f"Replay of {Path(absolute).name}", "replay", 10**9
            )
        for info in self.models():
            if info.id == model_id:
                return info
        provider, _, name = model_id.partition("/")
        if provider in PROVIDERS and name.strip():
            for info in CATALOG:
                if info.provider == provider and info.id == name:
                    return self._with_overrides(info)
            return self._with_overrides(ModelInfo(model_id, name, provider, 128_000))
        raise UnknownModel(
            f"unknown model {model_id!r}: use an id from GET /api/models, "
            "or 'provider/model' with provider one of " + ", ".join(PROVIDERS)
        )

    def _with_overrides(self, info: ModelInfo) -> ModelInfo:
        window = self.context_windows.get(info.id)
        return replace(info, context_window=window) if window else info

    def default_model(self) -> str:
        for provider in DEFAULT_ORDER:
            # (a configured provider may list no models: Azure without deployments)
            if self.configured(provider) and (models := self.models(provider)):
                return models[0].id
        return CATALOG[0].id

    def price(self, model_id: str) -> tuple[float, float] | None:
        """USD per million (input, output) tokens, if known."""
        if model_id in self.prices:
            return self.prices[model_id]
        return self.prices.get(model_id.partition("/")[2])

    # -- building models -------------------------------------------------------------------

    def check_configured(self, model_id: str) -> ModelInfo:
        """The model's info; `ProviderError(PROVIDER_NOT_CONFIGURED)` naming what is missing."""
        info = self.resolve(model_id)
        if info.provider == "replay" and self.replay_restricted:
            os.close(self._open_replay(replay_path(info.id), open_beneath))
        if info.provider == "ollama" and not self.configured("ollama"):
            raise ProviderError(
                "PROVIDER_NOT_CONFIGURED",
                f"Ollama does not answer at {self.ollama_host} (set OLLAMA_HOST)",
            )
        missing = self.missing_settings(info.provider)
        if missing:
            raise ProviderError(
                "PROVIDER_NOT_CONFIGURED",
                f"provider {info.provider!r} is not configured: set {', '.join(missing)}",
            )
        return info

    def _open_replay(self, path: str, opener: Callable[[Path, str], T]) -> T:
        """`opener(replay_dir, path)`; one `REPLAY_REFUSED` for whatever goes wrong."""
        if self.replay_dir is None:
            raise ProviderError("REPLAY_REFUSED", REFUSED)
        try:
            return opener(self.replay_dir, path)
        except (OSError, ValueError) as exc:
            log.info("replay_refused", path=path, reason=str(exc))
            raise ProviderError("REPLAY_REFUSED", REFUSED) from None

    def create(self, model_id: str) -> Model:
        """A ready `Model`; `ProviderError` if its provider is not configured."""
        info = self.check_configured(model_id)
        if info.provider == "replay" and self.replay_restricted:
            data = self._open_replay(replay_path(info.id), read_beneath)
            try:
                return ReplayModel.from_bytes(data, info.id)
            except ProviderError as exc:
                log.info("replay_refused", model=info.id, reason=exc.message)
                raise ProviderError("REPLAY_REFUSED", REFUSED) from None
        if info.provider == "replay":
            return ReplayModel.from_file(replay_path(info.id), info.id)
        if info.provider == "custom":
            return self._custom[info.id][1]()
        api_model = info.id.partition("/")[2] if "/" in info.id else info.id
        env = self.environ
        if info.provider == "anthropic":
            from minidevin.runtime.providers.anthropic_messages import (
                AnthropicModel,
                anthropic_client,
            )

            client = anthropic_client(
                api_key=env.get("ANTHROPIC_API_KEY"),
                base_url=env.get("ANTHROPIC_BASE_URL"),
                timeout=self.timeout,
                max_retries=0,
            )
            return AnthropicModel(model_id, client, api_model=api_model)

        import openai

        from minidevin.runtime.providers.openai_chat import OpenAIChatModel, openai_client

        if info.provider == "azure":
            azure = openai.AzureOpenAI(
                api_key=env["AZURE_OPENAI_API_KEY"],
                azure_endpoint=env["AZURE_OPENAI_ENDPOINT"],
                api_version=env["OPENAI_API_VERSION"],
                timeout=self.timeout,
                max_retries=0,
            )
            return OpenAIChatModel(model_id, azure, api_model=api_model)
        if info.provider == "ollama":
            client = openai_client(
                api_key="ollama",
                base_url=f"{self.ollama_host}/v1",
                timeout=self.timeout,
                max_retries=0,
            )
            return OpenAIChatModel(model_id, client, api_model=api_model)
        client = openai_client(
            api_key=env.get("OPENAI_API_KEY"),
            base_url=env.get("OPENAI_BASE_URL"),
            timeout=self.timeout,
            max_retries=0,
        )
        return OpenAIChatModel(model_id, client, api_model=api_model)
