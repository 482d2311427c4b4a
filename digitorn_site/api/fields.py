"""The serializer fields every endpoint shares: strict about JSON types, never coercing.

DRF's own fields coerce (``1`` becomes ``"1"``, ``"no"`` becomes ``False``); a request body is
attacker input, so a wrong type answers 400 naming the field instead of being guessed at.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """No silent coercion of numbers or lists to strings."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError(f"must be a string, got {type(data).__name__}.")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only (not ``true``, not ``"3"``)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError(f"must be an integer, got {type(data).__name__}.")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """JSON true/false only: a decision or a flag must not hinge on how "no" or "0" is coerced."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            raise serializers.ValidationError(f"must be true or false, got {type(data).__name__} {repr(data)[:100]}.")
        return data


@extend_schema_field(OpenApiTypes.OBJECT)
class ObjectField(serializers.Field):
    """A JSON object passed through as is (tool parameters: the tool's own schema checks them)."""

    def to_internal_value(self, data: Any) -> dict:
        if not isinstance(data, dict):
            raise serializers.ValidationError(f"must be an object of tool parameters, got {type(data).__name__}.")
        return data

    def to_representation(self, value: Any) -> Any:
        return value
