"""Brains: the LLM adapters behind agents (``openai``, ``anthropic``, ``scripted``).

Use :func:`brain_for` with an agent of the compiled app and await ``brain.complete(...)``; see
:class:`Brain` for the transcript shape and :class:`BrainError` for the failure kinds.
"""

from __future__ import annotations

from apps_registry.manifest.compiled import AgentSpec

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

PROVIDERS = ("openai", "anthropic", "scripted")

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

    Cheap to build (no network until ``complete``), so callers may build one per step.
    An unknown provider raises ``BrainError(kind="bad_response")`` naming the agent and field.
    """
    spec = agent.brain
    config = dict(spec.config or {})
    provider = (spec.provider or "").strip().lower()
    if provider == "scripted":
        return ScriptedBrain(rules=config.get("rules", []), path=f"agents.{agent.id}.brain.config.rules")
    if provider == "openai":
        from .openai import OpenAIBrain

        return OpenAIBrain.from_spec(spec, agent_id=agent.id)
    if provider == "anthropic":
        from .anthropic import AnthropicBrain

        return AnthropicBrain.from_spec(spec, agent_id=agent.id)
    raise BrainError(
        f"agents.{agent.id}.brain.provider: unknown provider {spec.provider!r}; use one of {', '.join(PROVIDERS)}",
        kind="bad_response",
    )
