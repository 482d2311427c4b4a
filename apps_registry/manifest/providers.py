"""LLM providers the manifest language names, each mapped to the protocol this daemon speaks to it.

The original Digitorn names a provider (``deepseek``, ``ollama``, ...) and a ``backend`` (the wire
protocol: ``openai_compat`` or ``anthropic``). Every provider below is served by one of the two
protocol adapters in ``conversations.brains`` with its default base URL, which ``config.base_url``
overrides. ``env_key`` is the provider's conventional environment variable for its API key, used
only under the rule in :func:`conventional_key_allowed`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    name: str
    protocol: str  # openai | anthropic | scripted
    base_url: str = ""
    env_key: str = ""
    local: bool = False  # runs without credentials


_OPENAI = "openai"
PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("openai", _OPENAI, "https://api.openai.com/v1", "OPENAI_API_KEY"),
        Provider("anthropic", "anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
        Provider("deepseek", _OPENAI, "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
        Provider("groq", _OPENAI, "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
        Provider("mistral", _OPENAI, "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
        Provider("together", _OPENAI, "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
        Provider("openrouter", _OPENAI, "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        Provider("featherless", _OPENAI, "https://api.featherless.ai/v1", "FEATHERLESS_API_KEY"),
        Provider("minimax", _OPENAI, "https://api.minimax.io/v1", "MINIMAX_API_KEY"),
        Provider("moonshot", _OPENAI, "https://api.moonshot.ai/v1", "MOONSHOT_API_KEY"),
        Provider("kimi", _OPENAI, "https://api.moonshot.ai/v1", "MOONSHOT_API_KEY"),
        Provider("google-gemini", _OPENAI, "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
        Provider("gemini", _OPENAI, "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
        Provider("xai", _OPENAI, "https://api.x.ai/v1", "XAI_API_KEY"),
        Provider("grok", _OPENAI, "https://api.x.ai/v1", "XAI_API_KEY"),
        Provider("cerebras", _OPENAI, "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
        Provider("perplexity", _OPENAI, "https://api.perplexity.ai", "PERPLEXITY_API_KEY"),
        Provider("fireworks", _OPENAI, "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
        Provider("ollama", _OPENAI, "http://localhost:11434/v1", "", local=True),
        Provider("lm_studio", _OPENAI, "http://localhost:1234/v1", "", local=True),
        Provider("vllm", _OPENAI, "http://localhost:8000/v1", "", local=True),
        Provider("scripted", "scripted"),
    )
}
# Named by the original but not servable here: one clear error naming it.
UNSUPPORTED_PROVIDERS = {
    "github_copilot": "it needs a GitHub Copilot subscription session, which this daemon cannot hold",
}
BACKENDS = {"openai_compat": _OPENAI, "openai": _OPENAI, "anthropic": "anthropic"}
UNSUPPORTED_BACKENDS = {"github_copilot": UNSUPPORTED_PROVIDERS["github_copilot"]}


def provider_named(name: str) -> Provider | None:
    return PROVIDERS.get(name.strip().lower()) if isinstance(name, str) else None


def conventional_key_allowed(*, environment_allowed: bool, provider: str, base_url: str) -> bool:
    """Whether a brain with no api_key may take the provider's conventional environment variable.

    Only for apps deployed by an ``admin`` key (``environment_allowed``), and only when the brain
    talks to the provider's own default endpoint: otherwise a deployer could point ``base_url`` at
    their own server and receive the daemon's key in the Authorization header.
    """
    spec = provider_named(provider)
    if not environment_allowed or spec is None or not spec.env_key:
        return False
    return (base_url or spec.base_url).rstrip("/") == spec.base_url.rstrip("/")
