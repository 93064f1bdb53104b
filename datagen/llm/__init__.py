"""LLM generation through any OpenAI-compatible server (client, prompts, reply checks, step)."""

from datagen.llm.client import ChatClient, ChatResult, LLMRequestError
from datagen.llm.config import LLMGenerateConfig

__all__ = ["ChatClient", "ChatResult", "LLMRequestError", "LLMGenerateConfig"]
