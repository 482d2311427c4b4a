"""http: outgoing HTTP requests with a timeout, a response size cap and SSRF protection.

Config: ``allowed_hosts`` (host names or IP literals, compared with the URL's host, that may be
private/loopback — e.g. ``["127.0.0.1"]`` for a local service), ``timeout`` (seconds, default 30),
``max_response_bytes`` (default 1 MiB), ``max_redirects`` (default 5).

Every host is resolved first; when any of its addresses is not a public unicast address (loopback,
private, link-local such as 169.254.169.254, carrier-grade NAT, reserved, multicast, unspecified,
and IPv6 addresses that carry one of those IPv4 addresses: IPv4-mapped/compatible, NAT64
``64:ff9b::/96`` and ``64:ff9b:1::/48``, 6to4 ``2002::/16``, Teredo) the request is refused unless
the URL's host is listed in ``allowed_hosts``. ``timeout`` bounds the whole call — connect,
redirects and every read of the body — not each read. The connection then goes to the address that was checked (the Host header and
TLS SNI keep the name), so a DNS answer that changes between check and connect cannot redirect it.
Redirects are followed by hand and each hop is checked the same way.
"""

from __future__ import annotations

import ipaddress
import json as jsonlib
import socket
import threading
import time
from typing import Any

import httpx

from tooling.modules.base import Module, ToolError, action

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
_HEADERS = {"type": "object", "additionalProperties": {"type": "string"}}
_QUERY = {"type": "object", "additionalProperties": {"type": ["string", "number", "integer", "boolean"]}}


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address routes to or carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _V4_COMPATIBLE or any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner:
            # Local-use NAT64 (64:ff9b:1::/48) translates into a private network by definition.
            if ip in _NAT64[1]:
                return False
            return all(_public(v4) for v4 in inner)
    return ip.is_global and not ip.is_multicast


def _abort(response: httpx.Response) -> None:
    """Shut the response's socket: a read blocked in another thread returns at once."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class HttpModule(Module):
    id = "http"
    description = "Make HTTP requests to public web services (and explicitly allowed hosts)."
    config_schema = {
        "type": "object",
        "properties": {
            "allowed_hosts": {"type": "array", "items": {"type": "string"}},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "default": DEFAULT_TIMEOUT},
            "max_response_bytes": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_BYTES},
            "max_redirects": {"type": "integer", "minimum": 0, "default": DEFAULT_MAX_REDIRECTS},
        },
        "additionalProperties": False,
    }

    def _allowed(self, host: str) -> bool:
        host = host.strip("[]").lower()
        return any(host == str(h).strip("[]").lower() for h in self.config.get("allowed_hosts") or ())

    def _target(self, url: httpx.URL) -> tuple[httpx.URL, dict[str, Any]]:
        """Check a URL; return the URL to connect to (host pinned to a checked address) and extensions."""
        if url.scheme not in ("http", "https"):
            raise ToolError(f"params.url: scheme '{url.scheme}' is not allowed; use http or https.")
        host = url.host
        if not host:
            raise ToolError("params.url: has no host.")
        if self._allowed(host):
            return url, {}
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ToolError(f"params.url: cannot resolve host '{host}' ({exc.strerror}).")
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if not _public(address):
                raise ToolError(
                    f"params.url: '{host}' resolves to {address}, a loopback/private/link-local or reserved "
                    "address; requests there are refused unless the app lists the host in "
                    "modules.http.allowed_hosts."
                )
            addresses.append(address)
        pinned = url.copy_with(host=str(addresses[0]))
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        return pinned, extensions

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        body: str | None = None,
    ) -> dict[str, Any]:
        if json is not None and body is not None:
            raise ToolError("params.body: send either 'json' or 'body', not both.")
        try:
            current = httpx.URL(url)
            if params:
                current = current.copy_merge_params({k: str(v) for k, v in params.items()})
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ToolError(f"params.url: not a valid URL ({exc}).")
        timeout = float(self.config.get("timeout") or DEFAULT_TIMEOUT)
        cap = int(self.config.get("max_response_bytes") or DEFAULT_MAX_BYTES)
        max_redirects = int(self.config.get("max_redirects", DEFAULT_MAX_REDIRECTS))
        base_headers = {
            k: v for k, v in (headers or {}).items() if k.lower() not in ("host", "content-length")
        }
        content = (
            jsonlib.dumps(json).encode()
            if json is not None
            else (body.encode() if body is not None else None)
        )
        if json is not None:
            base_headers.setdefault("Content-Type", "application/json")
        method = method.upper()
        # One deadline for the whole call: httpx's timeouts apply to each connect/read, so a server
        # dripping a byte a second would otherwise hold the worker forever.
        deadline = time.monotonic() + timeout
        too_slow = ToolError(f"params.url: the request did not complete within {timeout:g} s (modules.http.timeout).")
        with httpx.Client(follow_redirects=False, trust_env=False) as client:
            for _hop in range(max_redirects + 1):
                pinned, extensions = self._target(current)
                request_headers = {**base_headers, "Host": current.netloc.decode("ascii")}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise too_slow
                try:
                    request = client.build_request(
                        method,
                        pinned,
                        headers=request_headers,
                        content=content,
                        extensions=extensions,
                        timeout=httpx.Timeout(remaining),
                    )
                    response = client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise too_slow
                except httpx.HTTPError as exc:
                    raise ToolError(
                        f"params.url: request to {current.host} failed ({exc.__class__.__name__}: {exc})."
                    )
                watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, args=(response,))
                watchdog.daemon = True
                watchdog.start()
                try:
                    if response.is_redirect and "location" in response.headers:
                        current = current.join(response.headers["location"])
                        if response.status_code == 303 or (
                            response.status_code in (301, 302) and method == "POST"
                        ):
                            method, content = "GET", None
                        continue
                    data = bytearray()
                    truncated = False
                    for chunk in response.iter_bytes():
                        if time.monotonic() >= deadline:
                            raise too_slow
                        room = cap - len(data)
                        if len(chunk) > room:
                            data.extend(chunk[:room])
                            truncated = True
                            break
                        data.extend(chunk)
                    if time.monotonic() >= deadline and not watchdog.is_alive():
                        raise too_slow  # the watchdog cut the body short
                except httpx.HTTPError as exc:
                    if time.monotonic() >= deadline:
                        raise too_slow
                    raise ToolError(
                        f"params.url: reading the answer of {current.host} failed ({exc.__class__.__name__}: {exc})."
                    )
                finally:
                    watchdog.cancel()
                    response.close()
                text = data.decode(response.encoding or "utf-8", errors="replace")
                result: dict[str, Any] = {
                    "url": str(current),
                    "status_code": response.status_code,
                    "headers": dict(response.headers),
                    "body": text,
                    "truncated": truncated,
                }
                if not truncated and "json" in response.headers.get("content-type", ""):
                    try:
                        result["json"] = jsonlib.loads(text)
                    except ValueError:
                        pass
                return result
        raise ToolError(f"params.url: more than {max_redirects} redirects.")

    @action(
        description="HTTP GET a URL and return status, headers and body (size-capped).",
        parameters={
            "properties": {"url": {"type": "string", "minLength": 1}, "headers": _HEADERS, "params": _QUERY},
            "required": ["url"],
        },
        risk_level="low",
        side_effects=("network_request",),
        aliases=("fetch", "download", "web", "curl", "telecharger", "recuperer"),
        tags=("http", "web", "network", "api"),
    )
    def get(
        self, url: str, headers: dict[str, str] | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._send("GET", url, headers=headers, params=params)

    @action(
        description="HTTP POST a JSON value or a text body to a URL.",
        parameters={
            "properties": {
                "url": {"type": "string", "minLength": 1},
                "json": {},
                "body": {"type": "string"},
                "headers": _HEADERS,
            },
            "required": ["url"],
        },
        risk_level="medium",
        side_effects=("network_request", "state_mutation"),
        aliases=("send", "submit", "webhook", "envoyer"),
        tags=("http", "web", "network", "api"),
    )
    def post(
        self, url: str, json: Any = None, body: str | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return self._send("POST", url, headers=headers, json=json, body=body)

    @action(
        description="Any HTTP request (method, url, headers, query params, json or text body).",
        parameters={
            "properties": {
                "method": {
                    "type": "string",
                    "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                },
                "url": {"type": "string", "minLength": 1},
                "headers": _HEADERS,
                "params": _QUERY,
                "json": {},
                "body": {"type": "string"},
            },
            "required": ["method", "url"],
        },
        risk_level="medium",
        side_effects=("network_request", "state_mutation"),
        aliases=("http_request", "rest", "api_call", "put", "patch"),
        tags=("http", "web", "network", "api"),
    )
    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        body: str | None = None,
    ) -> dict[str, Any]:
        return self._send(method, url, headers=headers, params=params, json=json, body=body)
