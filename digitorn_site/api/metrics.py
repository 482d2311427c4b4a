"""Probes and metrics the original's operators call: ``/healthz``, ``/readyz``, ``/api/metrics`` (JSON),
``/api/metrics/prometheus`` (text format 0.0.4, rendered by ``prometheus_client``) and
``/api/metrics/sessions``.

Every figure is read from the database at request time, not kept in process memory: with several
ASGI workers and Celery workers a per-process counter would show one worker's share only.
"""

from __future__ import annotations

import time

from django.db.models import Count
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from approvals.models import ApprovalRequest
from apps_registry.models import App
from conversations.models import Event, Message, Session, Turn
from digitorn_site import fastsql
from digitorn_site.api.base import ApiView
from digitorn_site.api.envelope import error_response, ok
from digitorn_site.errors import MethodNotAllowedError
from tooling.models import BackgroundTask, ToolExecution

STARTED_AT = time.time()


def _db_ok() -> bool:
    try:
        fastsql.ping()
    except Exception:  # noqa: BLE001 - a probe reports, never raises
        return False
    return True


@csrf_exempt
def healthz(request) -> JsonResponse:
    """Liveness (public): the process answers. No version, no internals."""
    if request.method != "GET":
        return error_response(MethodNotAllowedError(f'Method "{request.method}" not allowed; use GET.'))
    return JsonResponse({"status": "ok"})


@csrf_exempt
def readyz(request) -> JsonResponse:
    """Readiness (public): the database answers; 503 otherwise."""
    if request.method != "GET":
        return error_response(MethodNotAllowedError(f'Method "{request.method}" not allowed; use GET.'))
    ready = _db_ok()
    return JsonResponse({"status": "ready" if ready else "not_ready", "database": ready}, status=200 if ready else 503)


def _by_status(model) -> dict[str, int]:
    return {row["status"]: row["n"] for row in model.objects.values("status").annotate(n=Count("id")).order_by()}


def metrics_snapshot() -> dict:

    turns = _by_status(Turn)
    return {
        "uptime_seconds": round(time.time() - STARTED_AT, 3),
        "apps": App.objects.count(),
        "sessions": {
            "total": Session.objects.count(),
            "active": Session.objects.filter(
                turns__status__in=[Turn.Status.QUEUED, Turn.Status.RUNNING, Turn.Status.WAITING_APPROVAL]
            ).distinct().count(),
        },
        "messages": Message.objects.count(),
        "events": Event.objects.count(),
        "turns": turns,
        "tool_executions": ToolExecution.objects.count(),
        "background_tasks": _by_status(BackgroundTask),
        "approvals": _by_status(ApprovalRequest),
    }


def sessions_snapshot() -> dict:

    per_app = [
        {"app_id": row["app_id"], "sessions": row["n"]}
        for row in Session.objects.values("app_id").annotate(n=Count("id")).order_by("app_id")
    ]
    by_status = {row["status"]: row["n"] for row in Session.objects.values("status").annotate(n=Count("id")).order_by()}
    return {"total": sum(r["sessions"] for r in per_app), "by_status": by_status, "apps": per_app}


class MetricsView(ApiView):
    required_scope = "admin"

    def get(self, request):
        return ok(metrics_snapshot())


class SessionMetricsView(ApiView):
    required_scope = "admin"

    def get(self, request):
        return ok(sessions_snapshot())


class PrometheusMetricsView(ApiView):
    """The same figures as gauges in Prometheus' text format (not the JSON envelope)."""

    required_scope = "admin"
    schema = None  # documented by hand in schema.py: text/plain, not the JSON envelope

    def get(self, request):
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

        snap = metrics_snapshot()
        registry = CollectorRegistry()
        Gauge("digitorn_uptime_seconds", "Seconds since this worker started", registry=registry).set(
            snap["uptime_seconds"]
        )
        Gauge("digitorn_apps", "Deployed apps", registry=registry).set(snap["apps"])
        Gauge("digitorn_sessions", "Sessions stored", registry=registry).set(snap["sessions"]["total"])
        Gauge("digitorn_sessions_active", "Sessions with a turn running, waiting or queued", registry=registry).set(
            snap["sessions"]["active"]
        )
        Gauge("digitorn_messages", "Transcript messages stored", registry=registry).set(snap["messages"])
        Gauge("digitorn_events", "Events in the durable log", registry=registry).set(snap["events"])
        Gauge("digitorn_tool_executions", "Tool executions recorded", registry=registry).set(snap["tool_executions"])
        for name, help_text, key in (
            ("digitorn_turns", "Turns by status", "turns"),
            ("digitorn_background_tasks", "Background tasks by status", "background_tasks"),
            ("digitorn_approvals", "Approval requests by status", "approvals"),
        ):
            gauge = Gauge(name, help_text, ["status"], registry=registry)
            for status, count in snap[key].items():
                gauge.labels(status=status).set(count)
        return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
