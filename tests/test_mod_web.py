"""web module: fetch and search against local HTTP servers speaking the real formats."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.httpkit import QuietHandler, serving
from tests.modkit import err, make_app, ok

pytestmark = pytest.mark.django_db

ARTICLE = """<!doctype html><html><head><title>Tides explained</title></head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | Menu item</nav>
<article><h1>Tides explained</h1>
<p>Tides are the rise and fall of sea levels caused by the combined effects of the gravitational
forces exerted by the Moon and the Sun and the rotation of the Earth.</p>
<p>Most places in the ocean usually experience two high tides and two low tides each day, called a
semi-diurnal tide. Some locations experience only one high and one low tide each day.</p>
<p>The times and amplitude of tides at a locale are influenced by the alignment of the Sun and Moon,
by the pattern of tides in the deep ocean and by the shape of the coastline.</p>
</article><footer>Copyright footer text</footer></body></html>"""


class Handler(QuietHandler):
    calls: list[tuple[str, str, dict]] = []
    content_type = "text/html; charset=utf-8"

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        Handler.calls.append(("GET", self.path, dict(self.headers)))
        port = self.server.server_address[1]
        if url.path == "/article":
            self._send(200, ARTICLE.encode())
        elif url.path == "/plain":
            self._send(200, b"just text", "text/plain")
        elif url.path == "/same":
            self._send(302, b"", headers={"Location": "/article"})
        elif url.path == "/away":
            self._send(302, b"", headers={"Location": f"http://localhost:{port}/article"})
        elif url.path == "/huge":
            self._send(200, b"x" * 300_000, "text/plain")
        elif url.path == "/search":  # SearXNG
            body = {"results": [
                {"title": "Tides", "url": "https://en.wikipedia.org/wiki/Tide", "content": "Tides are..."},
                {"title": "Blocked", "url": "https://spam.example/tides", "content": "buy"},
            ]}
            assert query["format"] == ["json"]
            self._send(200, json.dumps(body).encode(), "application/json")
        elif url.path == "/brave":
            if self.headers.get("X-Subscription-Token") != "brave-key":
                self._send(401, b"{}", "application/json")
                return
            body = {"web": {"results": [{"title": "B", "url": "https://b.example/", "description": "from brave"}]}}
            self._send(200, json.dumps(body).encode(), "application/json")
        else:
            self._send(404, b"missing")

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.calls.append(("POST", self.path, payload))
        body = {"results": [{"title": "T", "url": "https://t.example/", "content": f"q={payload['query']}"}]}
        self._send(200, json.dumps(body).encode(), "application/json")


@pytest.fixture(scope="module")
def server():
    with serving(Handler) as url:
        yield url


@pytest.fixture
def app(tmp_path, server):
    return make_app(tmp_path, web={"allowed_hosts": ["127.0.0.1"], "max_response_bytes": 100_000})


def test_fetch_extracts_the_article_as_markdown(app, server):
    data = ok(app, "web.fetch", url=f"{server}/article")
    assert data["status_code"] == 200 and data["title"] == "Tides explained"
    assert "two high tides" in data["content"]
    assert "Copyright footer" not in data["content"] and "Menu item" not in data["content"]
    raw = ok(app, "web.fetch", url=f"{server}/article", raw=True)
    assert raw["content"].startswith("<!doctype html>")
    assert ok(app, "web.fetch", url=f"{server}/plain")["content"] == "just text"
    short = ok(app, "web.fetch", url=f"{server}/article", max_length=20)
    assert len(short["content"]) == 20 and short["truncated"] is True


def test_redirects_same_host_followed_cross_host_reported(app, server):
    assert "two high tides" in ok(app, "web.fetch", url=f"{server}/same")["content"]
    away = ok(app, "web.fetch", url=f"{server}/away")
    assert away["redirect"]["cross_host"] is True and away["redirect"]["location"].startswith("http://localhost:")
    assert away["content"] == ""


def test_ssrf_guard_of_http_applies(tmp_path, server):
    app = make_app(tmp_path, web={})
    message = err(app, "web.fetch", url=f"{server}/article")
    assert "loopback/private" in message
    assert "scheme 'file'" in err(app, "web.fetch", url="file:///etc/passwd")


def test_too_large_page_is_refused(tmp_path, server):
    app = make_app(tmp_path, web={"allowed_hosts": ["127.0.0.1"], "max_response_bytes": 1000})
    message = err(app, "web.fetch", url=f"{server}/huge")
    assert "300000 bytes" in message and "modules.web.max_response_bytes" in message


def test_unreachable_page_is_a_tool_error(tmp_path):
    app = make_app(tmp_path, web={"allowed_hosts": ["127.0.0.1"], "timeout": 2})
    assert "failed" in err(app, "web.fetch", url="http://127.0.0.1:9/")


def test_search_backends(tmp_path, server):
    searx = make_app(tmp_path, web={"search": {"backend": "searxng", "url": server}})
    data = ok(searx, "web.search", query="tides", blocked_domains=["spam.example"])
    assert data["results"] == [{"title": "Tides", "url": "https://en.wikipedia.org/wiki/Tide", "snippet": "Tides are..."}]
    only = ok(searx, "web.search", query="tides", allowed_domains=["wikipedia.org"], limit=5)
    assert [r["title"] for r in only["results"]] == ["Tides"]
    brave = make_app(tmp_path, web={"search": {"backend": "brave", "url": f"{server}/brave", "api_key": "brave-key"}})
    assert ok(brave, "web.search", query="x")["results"][0]["snippet"] == "from brave"
    tavily = make_app(tmp_path, web={"search": {"backend": "tavily", "url": f"{server}/tavily", "api_key": "tv"}})
    assert ok(tavily, "web.search", query="moon")["results"][0]["snippet"] == "q=moon"
    wrong = make_app(tmp_path, web={"search": {"backend": "brave", "url": f"{server}/brave", "api_key": "bad"}})
    assert "HTTP 401" in err(wrong, "web.search", query="x")


def test_search_without_backend_says_what_to_configure(tmp_path):
    message = err(make_app(tmp_path, web={}), "web.search", query="tides")
    assert "modules.web.search.backend" in message
    assert "needs an API key" in err(make_app(tmp_path, web={"search": {"backend": "brave"}}), "web.search", query="x")
    down = make_app(tmp_path, web={"search": {"backend": "searxng", "url": "http://127.0.0.1:9"}, "timeout": 2})
    assert "cannot reach" in err(down, "web.search", query="x")
