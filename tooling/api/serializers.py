"""Input shapes of the discovery and direct-execution endpoints."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from digitorn_site.errors import ValidationError


@extend_schema_field(OpenApiTypes.OBJECT)
class ObjectField(serializers.Field):
    def to_internal_value(self, data: Any) -> dict:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                f"must be an object of tool parameters, got {type(data).__name__}."
            )
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class SearchQuerySerializer(serializers.Serializer):
    # Empty or missing → an empty answer, like the original (clients probe with an empty box).
    query = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="", trim_whitespace=False)
    max_results = serializers.IntegerField(min_value=1, max_value=50, default=10)


class CategoryPageSerializer(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, default=1)


class ExecuteSerializer(serializers.Serializer):
    params = ObjectField(required=False, default=dict)


def parse(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) and not hasattr(data, "getlist"):
        raise ValidationError(f"The request body must be a JSON object, not {type(data).__name__}.")
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
