"""Input shapes of the discovery, direct-execution and background-task endpoints."""

from __future__ import annotations

import json
import math
from typing import Any

from rest_framework import serializers

from digitorn_site.api.fields import ObjectField, StrictCharField

LIST_LIMIT_MAX = 500
DEFAULT_WAIT_SECONDS = 60.0


class SearchQuerySerializer(serializers.Serializer):
    # Empty or missing → an empty answer, like the original (clients probe with an empty box).
    query = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="", trim_whitespace=False)
    max_results = serializers.IntegerField(min_value=1, max_value=50, default=10)


class CategoryPageSerializer(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, default=1)


class ExecuteSerializer(serializers.Serializer):
    params = ObjectField(required=False, default=dict)


class LaunchSerializer(serializers.Serializer):
    body_example = '{"tool": "module.action", "params": {...}}'

    tool = StrictCharField(max_length=200)
    params = ObjectField(required=False, default=dict)
    session_id = StrictCharField(max_length=200, required=False, allow_null=True, allow_blank=True, default=None)


class ListQuerySerializer(serializers.Serializer):
    status = serializers.CharField(required=False, allow_blank=True, default="")
    session_id = serializers.CharField(required=False, allow_blank=True, default="")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=LIST_LIMIT_MAX, default=100)


class SecondsField(serializers.Field):
    """A JSON number of seconds, zero or more (not ``true``, not ``"30"``, not NaN)."""

    def to_internal_value(self, data: Any) -> float:
        if (
            isinstance(data, bool)
            or not isinstance(data, int | float)
            or (isinstance(data, float) and not math.isfinite(data))
        ):
            raise serializers.ValidationError(f"must be a number of seconds, got {json.dumps(data)[:100]}.")
        if data < 0:
            raise serializers.ValidationError("must be zero or more seconds.")
        # An integer too large for a float is merely a very long wait (the view caps it anyway).
        return float(min(data, 10**9))

    def to_representation(self, value: Any) -> Any:
        return value


class WaitSerializer(serializers.Serializer):
    body_example = '{"timeout": 30}'

    timeout = SecondsField(required=False, allow_null=True, default=DEFAULT_WAIT_SECONDS)
