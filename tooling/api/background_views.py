"""Background-task endpoints under /api/apps/{app_id}/background-tasks.

Launch and list are DRF views. The task detail (GET, DELETE) and ``/wait`` are plain async views
(``digitorn_site.api.asyncviews``): waiting for a task (or for a cancelled one to stop) must not
hold one of the ASGI process's sync threads, so they poll the row with ``await asyncio.sleep``
between reads.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse

from apps_registry.selectors import app_get, app_runtime
from digitorn_site.api.asyncviews import async_endpoint
from digitorn_site.api.base import ApiView
from digitorn_site.api.envelope import ok, ok_response
from digitorn_site.principals import Principal
from tooling import background
from tooling.api.serializers import (
    DEFAULT_WAIT_SECONDS,
    LaunchSerializer,
    ListQuerySerializer,
    WaitSerializer,
)


class BackgroundTaskListView(ApiView):
    required_scope = {"GET": "apps:read", "POST": "apps:run"}
    request_serializer = {"POST": LaunchSerializer}
    query_serializer = {"GET": ListQuerySerializer}

    def get(self, request, app_id: str):
        query = self.parse(ListQuerySerializer, request.query_params)
        app_get(app_id=app_id)
        tasks, total = background.background_task_list(
            app_id=app_id,
            principal=request.user.name,
            status=query["status"] or None,
            session_id=query["session_id"] or None,
            limit=query["limit"],
        )
        counts = background.background_task_counts(app_id=app_id, principal=request.user.name)
        return ok({"tasks": [background.background_task_payload(t) for t in tasks], "total": total, **counts})

    def post(self, request, app_id: str):
        body = self.parse(LaunchSerializer)
        app = app_runtime(app_id=app_id)
        task = background.background_task_launch(
            app=app,
            tool=body["tool"],
            params=body["params"],
            principal=request.user.name,
            session_id=body["session_id"] or None,
        )
        return ok(background.background_task_payload(task), status=202)


# --- plain async views ------------------------------------------------------------------------


@async_endpoint({"GET": "apps:read", "DELETE": "apps:run"})
async def background_task_detail(request: HttpRequest, principal: Principal, app_id: str, task_id: str) -> JsonResponse:
    await sync_to_async(app_get)(app_id=app_id)
    if request.method == "GET":
        task = await sync_to_async(background.background_task_get)(
            app_id=app_id, task_id=task_id, principal=principal.name
        )
    else:
        task = await background.background_task_cancel_and_settle(
            app_id=app_id, task_id=task_id, principal=principal.name
        )
    return ok_response(background.background_task_payload(task))


@async_endpoint({"POST": "apps:run"}, body=WaitSerializer)
async def background_task_wait(
    request: HttpRequest, principal: Principal, app_id: str, task_id: str, body: dict
) -> JsonResponse:
    # Capped rather than refused: a client asking for an hour gets the longest wait we allow.
    requested = DEFAULT_WAIT_SECONDS if body["timeout"] is None else body["timeout"]
    timeout = min(requested, background.wait_max_seconds())
    await sync_to_async(app_get)(app_id=app_id)
    task = await background.background_task_wait(
        app_id=app_id,
        task_id=task_id,
        principal=principal.name,
        timeout=timeout,
    )
    return ok_response(background.background_task_payload(task))
