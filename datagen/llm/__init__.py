"""LLM generation through any OpenAI-compatible server (client, prompts, reply checks, step).

The client (and with it the request cache's stack) is imported on first use: the recipe's model
needs only ``LLMGenerateConfig``."""

from datagen.llm.config import LLMGenerateConfig

__all__ = ["ChatClient", "ChatResult", "LLMRequestError", "LLMGenerateConfig"]


def __getattr__(name: str):
    if name in ("ChatClient", "ChatResult", "LLMRequestError"):
        from datagen.llm import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
