"""Which models exist, which providers are configured, and how to build a `Model`.

A model id is a catalog id (`gpt-4o`, `claude-3-5-sonnet-20241022`) or
`provider/model` (`openai/gpt-4o-mini`, `azure/<deployment>`, `ollama/llama3.2`).
Credentials come from each SDK's standard environment variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from minidevin.runtime.providers.base import Model, ProviderError

PROVIDERS: dict[str, str] = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "ollama": "Ollama",
    "azure": "Azure OpenAI",
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


class UnknownModel(ValueError):
    """A model id that no catalog entry or `provider/` prefix matches."""


class ProviderRegistry:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)

    def configured(self, provider: str) -> bool:
        match provider:
            case "openai":
                return bool(self.environ.get("OPENAI_API_KEY"))
            case _:
                return False

    def models(self, provider: str | None = None) -> list[ModelInfo]:
        return [m for m in CATALOG if provider is None or m.provider == provider]

    def resolve(self, model_id: str) -> ModelInfo:
        """The catalog entry for `model_id`; `UnknownModel` if there is none."""
        for info in CATALOG:
            if info.id == model_id:
                return info
        provider, _, name = model_id.partition("/")
        if provider in PROVIDERS and name:
            for info in CATALOG:
                if info.provider == provider and info.id == name:
                    return info
            return ModelInfo(model_id, name, provider, 128_000)
        raise UnknownModel(
            f"unknown model {model_id!r}: use an id from GET /api/models, "
            "or 'provider/model' with provider one of " + ", ".join(PROVIDERS)
        )

    def default_model(self) -> str:
        for provider in PROVIDERS:
            if self.configured(provider):
                return next(m.id for m in CATALOG if m.provider == provider)
        return CATALOG[0].id

    def create(self, model_id: str) -> Model:
        """A ready `Model`; `ProviderError` if its provider is not configured."""
        info = self.resolve(model_id)
        api_model = info.id.partition("/")[2] if "/" in info.id else info.id
        if info.provider == "openai":
            from minidevin.runtime.providers.openai_chat import OpenAIChatModel, openai_client

            client = openai_client(
                api_key=self.environ.get("OPENAI_API_KEY"),
                base_url=self.environ.get("OPENAI_BASE_URL"),
            )
            return OpenAIChatModel(model_id, client, api_model=api_model)
        raise ProviderError(
            "PROVIDER_NOT_CONFIGURED", f"provider {info.provider!r} is not available yet"
        )
