"""``brain.fallback``: another brain, used when the primary one fails (the original's degrade path).

The original switches on billing errors; here any failure the primary cannot recover from by its
own retries (connection refused, HTTP 5xx, 402/429 after retries, credentials refused, a malformed
answer) moves the call to the fallback, once per call. Tokens already streamed by the primary are
not taken back: the fallback's reply follows them.
"""

from __future__ import annotations

from typing import Any

from .base import Brain, BrainError, BrainReply, OnToken


class FallbackBrain(Brain):
    def __init__(self, primary: Brain, fallback: Brain):
        self.primary = primary
        self.fallback = fallback
        self.provider = getattr(primary, "provider", "")

    async def complete(
        self, *, messages: list[dict[str, Any]], tools: list[dict[str, Any]], on_token: OnToken | None = None
    ) -> BrainReply:
        try:
            return await self.primary.complete(messages=messages, tools=tools, on_token=on_token)
        except BrainError as first:
            try:
                return await self.fallback.complete(messages=messages, tools=tools, on_token=on_token)
            except BrainError as second:
                raise BrainError(
                    f"{first.message}; the fallback brain failed too: {second.message}",
                    kind=second.kind,
                    status=second.status,
                ) from second
