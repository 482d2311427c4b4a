"""HTTP plumbing shared by the network brains: one POST with bounded retries and error mapping."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from .base import BrainError

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 520, 522, 524, 529})
CONTEXT_OVERFLOW_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "input is too long",
)


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 3  # total attempts, not extra ones
    base_delay: float = 0.5  # seconds before the 2nd attempt; doubled each time
    max_delay: float = 8.0
    retry_after_cap: float = 20.0  # a server asking for longer gets reported as rate_limited instead

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RetryPolicy:
        return cls(
            tries=max(1, int(config.get("max_retries", 2)) + 1),
            base_delay=float(config.get("retry_base_delay", 0.5)),
            max_delay=float(config.get("retry_max_delay", 8.0)),
            retry_after_cap=float(config.get("retry_after_cap", 20.0)),
        )

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap)
        backoff = min(self.max_delay, self.base_delay * (2**attempt))
        return backoff * (0.8 + 0.4 * random.random())  # jitter so workers do not retry in lockstep


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


class HttpEndpoint:
    """POSTs JSON to one provider URL, retrying 429/5xx/connection failures with backoff."""

    def __init__(
        self,
        *,
        provider: str,
        url: str,
        headers: dict[str, str],
        timeout: float,
        retry: RetryPolicy,
        error_message: Any,
    ):
        self.provider = provider
        self.url = url
        self.headers = headers
        self.timeout = timeout
        self.retry = retry
        # (status, body_text) -> (provider message, provider error code/type) — providers nest differently
        self.error_message = error_message

    @asynccontextmanager
    async def post(self, body: dict[str, Any], *, stream: bool) -> AsyncIterator[httpx.Response]:
        """Yield a 2xx response (body unread when ``stream``); raise ``BrainError`` otherwise."""
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        async with httpx.AsyncClient(timeout=timeout) as client:
            attempt = 0
            while True:
                request = client.build_request("POST", self.url, json=body, headers=self.headers)
                try:
                    response = await client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise BrainError(
                        f"{self.provider} at {self.url} did not answer within {self.timeout:g} s; "
                        "raise the agent's brain.timeout or check the server",
                        kind="timeout",
                    )
                except (
                    httpx.ConnectError,
                    httpx.RemoteProtocolError,
                    httpx.ReadError,
                    httpx.WriteError,
                ) as exc:
                    if attempt + 1 < self.retry.tries:
                        await asyncio.sleep(self.retry.delay(attempt, None))
                        attempt += 1
                        continue
                    raise BrainError(
                        f"cannot reach {self.provider} at {self.url} after {attempt + 1} attempt(s): "
                        f"{exc.__class__.__name__}: {exc or 'connection failed'}; check brain.config.base_url "
                        "and that the server is running",
                        kind="connection",
                    )
                try:
                    if response.status_code < 300:
                        yield response
                        return
                    text = await self._read_text(response)
                finally:
                    await response.aclose()
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                can_retry = response.status_code in RETRYABLE_STATUS and attempt + 1 < self.retry.tries
                if can_retry and (retry_after is None or retry_after <= self.retry.retry_after_cap):
                    await asyncio.sleep(self.retry.delay(attempt, retry_after))
                    attempt += 1
                    continue
                raise self._status_error(response.status_code, text, attempts=attempt + 1)

    async def _read_text(self, response: httpx.Response) -> str:
        try:
            raw = await response.aread()
        except httpx.TimeoutException:
            return ""
        except httpx.HTTPError:
            return ""
        return raw.decode("utf-8", errors="replace")

    def _status_error(self, status: int, text: str, *, attempts: int) -> BrainError:
        message, code = self.error_message(status, text)
        detail = message or text.strip()[:300] or "no error message"
        where = f"{self.provider} at {self.url}"
        lowered = f"{code} {detail}".lower()
        if status in (401, 403):
            return BrainError(
                f"{where} refused the credentials (HTTP {status}): {detail}; check the agent's brain.config.api_key "
                "(usually a {{secret.X}} set with the app's secrets)",
                kind="auth",
                status=status,
            )
        if status == 413 or (status in (400, 422) and any(m in lowered for m in CONTEXT_OVERFLOW_MARKERS)):
            return BrainError(
                f"the conversation is longer than the model's context window (HTTP {status}): {detail}; "
                "start a new session or lower runtime.context_window_messages",
                kind="context_overflow",
                status=status,
            )
        if status == 429:
            return BrainError(
                f"{where} is rate limiting this key (HTTP 429) after {attempts} attempt(s): {detail}; "
                "wait and retry, or raise the provider quota",
                kind="rate_limited",
                status=status,
            )
        if status in (408, 504):
            return BrainError(f"{where} timed out (HTTP {status}): {detail}", kind="timeout", status=status)
        if status >= 500:
            return BrainError(
                f"{where} failed with HTTP {status} after {attempts} attempt(s): {detail}",
                kind="bad_response",
                status=status,
            )
        return BrainError(
            f"{where} rejected the request (HTTP {status}): {detail}; check the agent's brain.model and brain.config",
            kind="bad_response",
            status=status,
        )


def json_body(text: str, *, provider: str, url: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BrainError(
            f"{provider} at {url} answered with invalid JSON ({exc.msg} at position {exc.pos}): {text[:200]!r}",
            kind="bad_response",
        )
    if not isinstance(value, dict):
        raise BrainError(
            f"{provider} at {url} answered with JSON that is not an object: {text[:200]!r}",
            kind="bad_response",
        )
    return value


def nested_error(text: str) -> tuple[str, str]:
    """``{"error": {"message", "code"|"type"}}`` (OpenAI and Anthropic shapes) → (message, code)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    err = data.get("error", data)
    if isinstance(err, str):
        return err, ""
    if not isinstance(err, dict):
        return "", ""
    message = err.get("message") or data.get("message") or ""
    code = err.get("code") or err.get("type") or ""
    return str(message), str(code)


async def sse_data(
    response: httpx.Response, *, provider: str, url: str, timeout: float
) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` pairs of a server-sent-events body; a read timeout becomes ``BrainError``."""
    event, data_lines = "", []
    try:
        async for line in response.aiter_lines():
            if line == "":
                if data_lines:
                    yield event, "\n".join(data_lines)
                event, data_lines = "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data_lines.append(value)
        if data_lines:
            yield event, "\n".join(data_lines)
    except httpx.TimeoutException:
        raise BrainError(
            f"{provider} at {url} stopped streaming for more than {timeout:g} s; raise the agent's brain.timeout "
            "or check the server",
            kind="timeout",
        )
    except httpx.HTTPError as exc:
        raise BrainError(
            f"{provider} at {url} broke the stream: {exc.__class__.__name__}: {exc}", kind="connection"
        )
