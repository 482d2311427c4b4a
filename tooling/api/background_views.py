"""Background-task endpoints under /api/apps/{app_id}/background-tasks.

Launch and list are DRF views. The task detail (GET, DELETE) and ``/wait`` are plain async views:
waiting for a task (or for a cancelled one to stop) must not hold one of the ASGI process's sync
threads, so they poll the row with ``await asyncio.sleep`` between reads and render the envelope
themselves.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps_registry.selectors import app_get, app_runtime
from digitorn_site.api.auth import Principal, authenticate_request
from digitorn_site.api.envelope import error_response, ok, ok_response
from digitorn_site.api.exceptions import to_digitorn_error
from digitorn_site.api.views import ApiView
from digitorn_site.errors import DigitornError, MethodNotAllowedError, ValidationError
from tooling import background

log = logging.getLogger("digitorn.api")

LIST_LIMIT_MAX = 500


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(f"must be a string, got {type(data).__name__}.")
        return super().to_internal_value(data)


@extend_schema_field(OpenApiTypes.OBJECT)
class ObjectField(serializers.Field):
    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                f"must be an object of tool parameters, got {type(data).__name__}."
            )
        return data

    def to_representation(self, value):
        return value


class LaunchSerializer(serializers.Serializer):
    tool = StrictCharField(max_length=200)
    params = ObjectField(required=False, default=dict)
    session_id = StrictCharField(
        max_length=200, required=False, allow_null=True, allow_blank=True, default=None
    )


class ListQuerySerializer(serializers.Serializer):
    status = serializers.CharField(required=False, allow_blank=True, default="")
    session_id = serializers.CharField(required=False, allow_blank=True, default="")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=LIST_LIMIT_MAX, default=100)


class BackgroundTaskListView(ApiView):
    required_scope = {"GET": "apps:read", "POST": "apps:run"}
    request_serializer = {"POST": LaunchSerializer}
    query_serializer = {"GET": ListQuerySerializer}

    def get(self, request, app_id: str):
        query = ListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        app_get(app_id=app_id)
        tasks, total = background.background_task_list(
            app_id=app_id,
            principal=request.user.name,
            status=query.validated_data["status"] or None,
            session_id=query.validated_data["session_id"] or None,
            limit=query.validated_data["limit"],
        )
        counts = background.background_task_counts(app_id=app_id, principal=request.user.name)
        return ok({"tasks": [background.background_task_payload(t) for t in tasks], "total": total, **counts})

    def post(self, request, app_id: str):
        if not isinstance(request.data, dict):
            raise ValidationError('Send a JSON object: {"tool": "module.action", "params": {...}}.')
        body = LaunchSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        app = app_runtime(app_id=app_id)
        task = background.background_task_launch(
            app=app,
            tool=body.validated_data["tool"],
            params=body.validated_data["params"],
            principal=request.user.name,
            session_id=body.validated_data["session_id"] or None,
        )
        return ok(background.background_task_payload(task), status=202)


# --- plain async views ------------------------------------------------------------------------

Handler = Callable[[HttpRequest, Principal], Awaitable[JsonResponse]]


async def _run(request: HttpRequest, scope: str, handler: Handler) -> JsonResponse:
    try:
        principal = await sync_to_async(authenticate_request)(request, scope=scope)
        return await handler(request, principal)
    except Exception as exc:  # noqa: BLE001 - every failure leaves as the envelope
        error = to_digitorn_error(exc)
        if error is None:
            log.exception("unhandled error in %s", request.path, exc_info=exc)
            error = DigitornError("Internal error; the daemon's log has the details.")
        response = error_response(error)
        if error.status_code == 401:
            response["WWW-Authenticate"] = 'Bearer realm="digitorn"'
        return response


def _json_body(request: HttpRequest) -> dict:
    if not request.body.strip():
        return {}
    from digitorn_site.api.jsonbody import loads_body

    body = loads_body(request.body)  # 400 on malformed or too deeply nested JSON
    if not isinstance(body, dict):
        raise ValidationError('Send a JSON object such as {"timeout": 30}.')
    return body


def _timeout(body: dict) -> float:
    value = body.get("timeout", 60.0)
    if value is None:
        return 60.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"timeout: must be a number of seconds, got {json.dumps(value)}.")
    if value < 0:
        raise ValidationError("timeout: must be zero or more seconds.")
    # Capped rather than refused: a client asking for an hour gets the longest wait we allow.
    return min(float(value), background.wait_max_seconds())


@csrf_exempt
async def background_task_detail(request: HttpRequest, app_id: str, task_id: str) -> JsonResponse:
    if request.method == "GET":

        async def get(request: HttpRequest, principal: Principal) -> JsonResponse:
            await sync_to_async(app_get)(app_id=app_id)
            task = await sync_to_async(background.background_task_get)(
                app_id=app_id, task_id=task_id, principal=principal.name
            )
            return ok_response(background.background_task_payload(task))

        return await _run(request, "apps:read", get)
    if request.method == "DELETE":

        async def cancel(request: HttpRequest, principal: Principal) -> JsonResponse:
            await sync_to_async(app_get)(app_id=app_id)
            task = await background.background_task_cancel_and_settle(
                app_id=app_id, task_id=task_id, principal=principal.name
            )
            return ok_response(background.background_task_payload(task))

        return await _run(request, "apps:run", cancel)
    return error_response(MethodNotAllowedError(f'Method "{request.method}" not allowed; use GET or DELETE.'))


@csrf_exempt
async def background_task_wait(request: HttpRequest, app_id: str, task_id: str) -> JsonResponse:
    if request.method != "POST":
        return error_response(MethodNotAllowedError(f'Method "{request.method}" not allowed; use POST.'))

    async def wait(request: HttpRequest, principal: Principal) -> JsonResponse:
        timeout = _timeout(_json_body(request))
        await sync_to_async(app_get)(app_id=app_id)
        task = await background.background_task_wait(
            app_id=app_id,
            task_id=task_id,
            principal=principal.name,
            timeout=timeout,
        )
        return ok_response(background.background_task_payload(task))

    return await _run(request, "apps:run", wait)
