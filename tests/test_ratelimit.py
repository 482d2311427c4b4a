"""The sliding-window limiter on the embedded default (RateLimitHit rows, real SQLite)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from apps_registry import services as registry
from conversations.models import RateLimitHit
from conversations.ratelimit import WINDOW_SECONDS, rate_limit_hit, rate_limit_usage
from digitorn_site.errors import RateLimitError
from tests.helpers import scripted_manifest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def app(tmp_path: Path) -> str:
    registry.app_deploy(text=scripted_manifest("rl", tmp_path, [{"steps": [{"say": "x"}]}]), force=True)
    registry.app_rate_limit_set(app_id="rl", rpm=5)
    return "rl"


def test_limit_then_429_with_headers(app):
    for expected_remaining in (4, 3, 2, 1, 0):
        state = rate_limit_hit(app_id=app)
        assert state.remaining == expected_remaining
        assert state.headers()["X-RateLimit-Limit"] == "5"
    with pytest.raises(RateLimitError) as info:
        rate_limit_hit(app_id=app)
    headers = info.value.headers
    assert headers["X-RateLimit-Remaining"] == "0" and 1 <= int(headers["Retry-After"]) <= WINDOW_SECONDS
    assert "PUT /api/apps/rl/quota" in info.value.message
    assert RateLimitHit.objects.filter(app_id=app).count() == 5  # refused requests are not counted


def test_window_slides(app):
    now = time.time()
    # Three hits just outside the window, two inside: only the two count.
    for at in (now - WINDOW_SECONDS - 5, now - WINDOW_SECONDS - 1, now - WINDOW_SECONDS - 0.5, now - 30, now - 1):
        RateLimitHit.objects.create(app_id=app, at=at)
    usage = rate_limit_usage(app_id=app)
    assert usage.current == 2 and usage.remaining == 3
    assert 29 <= usage.reset_seconds <= 31  # when the hit from 30 s ago leaves
    for _ in range(3):
        rate_limit_hit(app_id=app)
    with pytest.raises(RateLimitError):
        rate_limit_hit(app_id=app)
    assert RateLimitHit.objects.filter(app_id=app, at__lt=now - WINDOW_SECONDS).count() == 0  # pruned


def test_apps_have_separate_windows(app, tmp_path):
    registry.app_deploy(text=scripted_manifest("other", tmp_path, [{"steps": [{"say": "x"}]}]), force=True)
    registry.app_rate_limit_set(app_id="other", rpm=1)
    rate_limit_hit(app_id="other")
    with pytest.raises(RateLimitError):
        rate_limit_hit(app_id="other")
    assert rate_limit_hit(app_id=app).current == 1


def test_concurrent_hits_never_exceed_the_limit(app):
    """Many threads, each with its own SQLite connection, race for 5 slots: exactly 5 win."""
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def worker() -> None:
        start.wait()
        try:
            rate_limit_hit(app_id=app)
            result = "ok"
        except RateLimitError:
            result = "limited"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 5 and outcomes.count("limited") == 7
    assert RateLimitHit.objects.filter(app_id=app).count() == 5
