"""web: fetch a page as readable text/markdown, and search the web through a configured backend.

Config::

    web:
      allowed_hosts: ["127.0.0.1"]    # hosts fetch may reach although private/loopback (as http's)
      timeout: 20                     # seconds per request
      max_response_bytes: 5242880     # a page larger than this is refused, not half-extracted
      max_length: 50000               # characters of extracted text returned by default
      search:
        backend: searxng              # searxng | brave | tavily
        url: http://127.0.0.1:8888    # searxng: the instance; brave/tavily: optional API URL override
        api_key: "{{secret.BRAVE_KEY}}"

``fetch`` reuses the http module's SSRF check (every hop's host is resolved and must be public unless
listed in ``allowed_hosts``; the connection goes to the checked address). A redirect to the same host
is followed (up to 5); one to another host is reported in the result (``redirect``), not followed, so
the agent decides whether to fetch it. HTML goes through trafilatura (main text as markdown); plain
text and JSON come back as they are.

``search`` only talks to the backend the app configured; the backend URL and key are the app
author's, so they are not SSRF-checked (a local SearXNG is the common case), but redirects from
the backend are not followed. Without ``search.backend`` it is a tool error that says what to add.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from tooling.modules.base import Module, ToolContext, ToolError, action
from tooling.modules.http import HttpModule

DEFAULT_TIMEOUT = 20.0
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_LENGTH = 50_000
MAX_SAME_HOST_REDIRECTS = 5
BACKENDS = ("searxng", "brave", "tavily")
_DEFAULT_URLS = {
    "brave": "https://api.search.brave.com/res/v1/web/search",
    "tavily": "https://api.tavily.com/search",
}
_USER_AGENT = "Mozilla/5.0 (compatible; DigitornBot/1.0; +https://digitorn.ai)"


def _domain_ok(url: str, allowed: list[str] | None, blocked: list[str] | None) -> bool:
    host = (urlsplit(url).hostname or "").lower()

    def under(domains: list[str]) -> bool:
        return any(host == d.lower().lstrip(".") or host.endswith("." + d.lower().lstrip(".")) for d in domains)

    if allowed and not under(allowed):
        return False
    return not (blocked and under(blocked))


class WebModule(Module):
    id = "web"
    description = "The web: search it through the configured engine and fetch pages as readable text."
    config_schema = {
        "type": "object",
        "properties": {
            "allowed_hosts": {"type": "array", "items": {"type": "string"}},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "default": DEFAULT_TIMEOUT},
            "max_response_bytes": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_BYTES},
            "max_length": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_LENGTH},
            "search": {
                "type": "object",
                "properties": {
                    "backend": {"type": "string", "enum": list(BACKENDS)},
                    "url": {"type": "string"},
                    "api_key": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }

    @property
    def timeout(self) -> float:
        return float(self.config.get("timeout") or DEFAULT_TIMEOUT)

    def _guard(self) -> HttpModule:
        """The http module with this module's allowed hosts: its ``_target`` is the one SSRF check."""
        context = ToolContext(app_id=self.context.app_id, principal=self.context.principal)
        return HttpModule(config={"allowed_hosts": list(self.config.get("allowed_hosts") or [])}, context=context)

    # -- fetch -----------------------------------------------------------------------------------
    def _download(self, url: str) -> dict[str, Any]:
        try:
            current = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ToolError(f"params.url: not a valid URL ({exc}).")
        guard = self._guard()
        cap = int(self.config.get("max_response_bytes") or DEFAULT_MAX_BYTES)
        with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False) as client:
            for _hop in range(MAX_SAME_HOST_REDIRECTS + 1):
                pinned, extensions = guard._target(current)
                headers = {"Host": current.netloc.decode("ascii"), "User-Agent": _USER_AGENT,
                           "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5"}
                try:
                    request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
                    response = client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise ToolError(f"params.url: no answer from {current.host} within {self.timeout:g} s.")
                except httpx.HTTPError as exc:
                    raise ToolError(f"params.url: request to {current.host} failed ({type(exc).__name__}: {exc}).")
                try:
                    if response.is_redirect and "location" in response.headers:
                        target = current.join(response.headers["location"])
                        if (target.scheme, target.host, target.port) == (current.scheme, current.host, current.port) or (
                            target.host == current.host and current.scheme == "http" and target.scheme == "https"
                        ):
                            current = target
                            continue
                        return {"url": str(current), "status_code": response.status_code,
                                "redirect": {"location": str(target), "cross_host": True}}
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > cap:
                        raise ToolError(
                            f"params.url: the page is {declared} bytes; this app fetches pages up to {cap} bytes "
                            "(modules.web.max_response_bytes)."
                        )
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > cap:
                            raise ToolError(
                                f"params.url: the page is larger than {cap} bytes, the limit of this app "
                                "(modules.web.max_response_bytes)."
                            )
                finally:
                    response.close()
                return {
                    "url": str(current),
                    "status_code": response.status_code,
                    "content_type": response.headers.get("content-type", ""),
                    "encoding": response.encoding or "utf-8",
                    "body": bytes(body),
                }
        raise ToolError(f"params.url: more than {MAX_SAME_HOST_REDIRECTS} redirects.")

    @action(
        description="Fetch a web page and return its main content as readable markdown/text (size-capped).",
        parameters={
            "properties": {
                "url": {"type": "string", "minLength": 1},
                "max_length": {"type": "integer", "minimum": 1, "description": "Cut the text after this many characters."},
                "extract": {"type": "boolean", "default": True,
                            "description": "Extract the main content (false: the whole page as text)."},
                "raw": {"type": "boolean", "default": False, "description": "Return the raw HTML instead."},
                "prompt": {"type": "string", "description": "What you are looking for (kept with the result)."},
            },
            "required": ["url"],
        },
        side_effects=("network_request",),
        aliases=("read_page", "browse", "scrape", "open_url", "webpage", "lire_page", "page_web", "naviguer", "recuperer"),
        tags=("web", "fetch", "page", "read"),
    )
    def fetch(self, url: str, max_length: int | None = None, extract: bool = True, raw: bool = False,
              prompt: str | None = None) -> dict[str, Any]:
        page = self._download(url)
        if "redirect" in page:
            return {**page, "content": "",
                    "note": "The page redirects to another host; fetch that URL if you trust it."}
        text = page["body"].decode(page["encoding"], errors="replace")
        ctype = page["content_type"].lower()
        is_html = "html" in ctype or (not ctype and text.lstrip()[:15].lower().startswith(("<!doctype", "<html")))
        title = None
        if is_html and not raw:
            import trafilatura

            content = None
            if extract:
                content = trafilatura.extract(text, url=page["url"], output_format="markdown",
                                              include_links=True, include_tables=True, favor_recall=True)
            if not content:
                content = trafilatura.html2txt(text) or ""
            meta = trafilatura.extract_metadata(text)
            title = getattr(meta, "title", None) if meta else None
        else:
            content = text
        limit = min(max_length or DEFAULT_MAX_LENGTH, int(self.config.get("max_length") or DEFAULT_MAX_LENGTH))
        truncated = len(content) > limit
        result = {
            "url": page["url"],
            "status_code": page["status_code"],
            "content_type": page["content_type"],
            "title": title,
            "content": content[:limit],
            "length": len(content),
            "truncated": truncated,
        }
        if prompt:
            result["prompt"] = prompt
        return result

    # -- search ----------------------------------------------------------------------------------
    def _backend_call(self, backend: str, settings: dict[str, Any], query: str, limit: int) -> list[dict[str, Any]]:
        url = str(settings.get("url") or _DEFAULT_URLS.get(backend, ""))
        key = str(settings.get("api_key") or "")
        if not url:
            raise ToolError(f"config.search.url: the {backend} backend needs the URL of the instance.")
        if backend in ("brave", "tavily") and not key:
            raise ToolError(f"config.search.api_key: the {backend} backend needs an API key.")
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False) as client:
                if backend == "searxng":
                    response = client.get(url.rstrip("/") + "/search",
                                          params={"q": query, "format": "json", "pageno": 1})
                elif backend == "brave":
                    response = client.get(url, params={"q": query, "count": min(limit, 20)},
                                          headers={"X-Subscription-Token": key, "Accept": "application/json"})
                else:
                    response = client.post(url, json={"api_key": key, "query": query, "max_results": limit},
                                           headers={"Authorization": f"Bearer {key}"})
        except httpx.TimeoutException:
            raise ToolError(f"web.search: the {backend} backend did not answer within {self.timeout:g} s.")
        except httpx.HTTPError as exc:
            raise ToolError(f"web.search: cannot reach the {backend} backend ({type(exc).__name__}).")
        if response.status_code != 200:
            raise ToolError(f"web.search: the {backend} backend answered HTTP {response.status_code}.")
        try:
            payload = response.json()
        except ValueError:
            raise ToolError(f"web.search: the {backend} backend did not answer JSON.")
        if backend == "searxng":
            items = payload.get("results") or []
            return [{"title": i.get("title", ""), "url": i.get("url", ""), "snippet": i.get("content", "")}
                    for i in items if isinstance(i, dict)]
        if backend == "brave":
            items = (payload.get("web") or {}).get("results") or []
            return [{"title": i.get("title", ""), "url": i.get("url", ""), "snippet": i.get("description", "")}
                    for i in items if isinstance(i, dict)]
        items = payload.get("results") or []
        return [{"title": i.get("title", ""), "url": i.get("url", ""), "snippet": i.get("content", "")}
                for i in items if isinstance(i, dict)]

    @action(
        description="Search the web and return result titles, URLs and snippets (via the app's search engine).",
        parameters={
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 1000},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
                "allowed_domains": {"type": "array", "items": {"type": "string"}},
                "blocked_domains": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["query"],
        },
        side_effects=("network_request",),
        aliases=("web_search", "google", "internet", "lookup", "recherche_web", "chercher_internet", "rechercher"),
        tags=("web", "search", "internet"),
    )
    def search(self, query: str, limit: int = 10, allowed_domains: list[str] | None = None,
               blocked_domains: list[str] | None = None) -> dict[str, Any]:
        settings = self.config.get("search") or {}
        backend = settings.get("backend")
        if not backend:
            raise ToolError(
                "web.search: no search backend is configured for this app; set modules.web.search.backend "
                f"({', '.join(BACKENDS)}) with its url and/or api_key."
            )
        results = self._backend_call(backend, settings, query, limit)
        results = [r for r in results if r["url"] and _domain_ok(r["url"], allowed_domains, blocked_domains)]
        results = results[:limit]
        return {"query": query, "backend": backend, "results": results, "count": len(results)}
