"""Brains: the LLM adapters behind agents (``openai``, ``anthropic``, ``scripted``).

Use :func:`brain_for` with an agent of the compiled app and await ``brain.complete(...)``; see
:class:`Brain` for the transcript shape and :class:`BrainError` for the failure kinds.
"""

from __future__ import annotations

from apps_registry.manifest.compiled import AgentSpec
from apps_registry.manifest.providers import PROVIDERS as _PROVIDER_TABLE
from apps_registry.manifest.providers import UNSUPPORTED_PROVIDERS

from .base import (
    BRAIN_ERROR_KINDS,
    Brain,
    BrainError,
    BrainReply,
    OnToken,
    ToolCall,
    canonical_tool_name,
    wire_tool_name,
)
from .scripted import ScriptedBrain, scripted_rules_problems

PROVIDERS = tuple(_PROVIDER_TABLE)

__all__ = [
    "BRAIN_ERROR_KINDS",
    "PROVIDERS",
    "Brain",
    "BrainError",
    "BrainReply",
    "OnToken",
    "ScriptedBrain",
    "ToolCall",
    "brain_for",
    "canonical_tool_name",
    "scripted_rules_problems",
    "wire_tool_name",
]


def brain_for(agent: AgentSpec) -> Brain:
    """The brain declared by ``agent.brain`` (provider, model, temperature, max_tokens, timeout, config).

    The provider's protocol (``BrainSpec.protocol``, or the provider table for apps stored before it
    existed) picks the adapter: every OpenAI-compatible provider (deepseek, ollama, groq, ...) goes
    through the OpenAI adapter with its base URL. With ``brain.fallback`` the result is a
    :class:`~.fallback.FallbackBrain` that tries the fallback when the primary fails.
    Cheap to build (no network until ``complete``), so callers may build one per step.
    An unknown provider raises ``BrainError(kind="bad_response")`` naming the agent and field.
    """
    brain = _single(agent.brain, agent.id, f"agents.{agent.id}.brain")
    fallback = agent.brain.fallback_spec()
    if fallback is None:
        return brain
    from .fallback import FallbackBrain

    return FallbackBrain(brain, _single(fallback, agent.id, f"agents.{agent.id}.brain.fallback"))


def _single(spec, agent_id: str, where: str) -> Brain:
    brain = _protocol_brain(spec, agent_id, where)
    if spec.native_tool_use is False and spec.protocol != "scripted":
        from .texttools import TextToolsBrain

        return TextToolsBrain(brain)
    return brain


def _protocol_brain(spec, agent_id: str, where: str) -> Brain:
    config = dict(spec.config or {})
    provider = (spec.provider or "").strip().lower()
    protocol = spec.protocol or (_PROVIDER_TABLE[provider].protocol if provider in _PROVIDER_TABLE else "")
    if protocol == "scripted":
        return ScriptedBrain(rules=config.get("rules", []), path=f"{where}.config.rules")
    if protocol == "openai":
        from .openai import OpenAIBrain

        return OpenAIBrain.from_spec(spec, agent_id=agent_id)
    if protocol == "anthropic":
        from .anthropic import AnthropicBrain

        return AnthropicBrain.from_spec(spec, agent_id=agent_id)
    reason = UNSUPPORTED_PROVIDERS.get(provider)
    raise BrainError(
        f"{where}.provider: provider {spec.provider!r} "
        + (f"cannot be served by this daemon: {reason}" if reason else f"is unknown; use one of {', '.join(PROVIDERS)}"),
        kind="bad_response",
    )
