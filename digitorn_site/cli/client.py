"""The CLI's HTTP client: finds the daemon, authenticates, and turns failures into exit codes.

Exit codes: 0 success, 1 the API answered with an error (its envelope's message is printed),
2 the daemon cannot be reached.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from digitorn_site.cli import config

EXIT_API_ERROR = 1
EXIT_DAEMON_DOWN = 2


class CliError(Exception):
    """A failure to report as one line on stderr with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_API_ERROR):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def path_part(value: str) -> str:
    """One URL path segment (app ids, keys and session ids are user input)."""
    return quote(value, safe="")


class ApiClient:
    def __init__(self, *, url: str | None = None, api_key: str | None = None, timeout: float = 30.0):
        self.url = config.resolve_url(url)
        self.api_key = config.resolve_api_key(api_key)
        headers = {"User-Agent": "digitorn-cli"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def down_error(self) -> CliError:
        return CliError(
            f"digitorn is not running at {self.url}; start it with `digitorn start`.", EXIT_DAEMON_DOWN
        )

    def request(self, method: str, path: str, **kwargs) -> Any:
        """Call the API and return the envelope's ``data``; raise CliError on any failure."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise self.down_error()
        except httpx.TimeoutException:
            raise CliError(f"digitorn at {self.url} did not answer {method} {path} in time.", EXIT_API_ERROR)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot talk to digitorn at {self.url}: {exc}", EXIT_DAEMON_DOWN)
        return self.unwrap(response)

    @staticmethod
    def unwrap(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            raise CliError(
                f"unexpected answer from {response.request.method} {response.request.url.path}: "
                f"HTTP {response.status_code}, not JSON ({response.text[:120]!r})."
            )
        if not isinstance(body, dict) or "success" not in body:
            raise CliError(f"unexpected answer from {response.request.url.path}: {str(body)[:200]}")
        if not body.get("success"):
            code = body.get("error_code") or f"HTTP {response.status_code}"
            message = body.get("error") or "request failed"
            details = body.get("details")
            extra = ""
            if isinstance(details, dict) and isinstance(details.get("errors"), list):
                lines = [f"  {e.get('path', '')}: {e.get('message', '')}" for e in details["errors"][1:6]
                         if isinstance(e, dict)]
                if lines:
                    extra = "\n" + "\n".join(lines)
            raise CliError(f"{message} ({code}){extra}")
        return body.get("data")

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs) -> Any:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs) -> Any:
        return self.request("DELETE", path, **kwargs)
