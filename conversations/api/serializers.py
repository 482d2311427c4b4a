"""Request bodies of the conversation endpoints; errors name the field."""

from __future__ import annotations

import re
from collections.abc import Mapping

from rest_framework import serializers

from digitorn_site.converters import NameConverter
from digitorn_site.errors import ValidationError

SESSION_ID = re.compile(rf"^{NameConverter.regex}$")


class StrictCharField(serializers.CharField):
    """No silent coercion of numbers or lists to strings."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(f"must be a string, got {type(data).__name__}.")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError(f"must be an integer, got {type(data).__name__}.")
        return super().to_internal_value(data)


def _session_id(value: str) -> str:
    if not SESSION_ID.match(value):
        raise serializers.ValidationError(
            "use 1-200 characters from letters, digits, '_', '.', ':' and '-' (it appears in URLs)."
        )
    return value


class ChatSerializer(serializers.Serializer):
    session_id = StrictCharField(validators=[_session_id])
    message = StrictCharField(trim_whitespace=False, max_length=100_000)


class MessageSerializer(serializers.Serializer):
    message = StrictCharField(trim_whitespace=False, max_length=100_000)


class RunSerializer(serializers.Serializer):
    input = StrictCharField(trim_whitespace=False, max_length=100_000)
    input_type = StrictCharField(required=False, default="text", max_length=32)


class QuotaSerializer(serializers.Serializer):
    rpm = StrictIntegerField(min_value=1, max_value=1_000_000)


class NotificationsSerializer(serializers.Serializer):
    session_id = StrictCharField(validators=[_session_id])


def validate(serializer_class: type[serializers.Serializer], data) -> dict:
    """For the plain async views (DRF's exception handler is not in their path)."""
    if not isinstance(data, Mapping):
        raise ValidationError(f"The request body must be a JSON object, got {type(data).__name__}.")
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        from digitorn_site.api.exceptions import to_digitorn_error

        raise to_digitorn_error(serializers.ValidationError(serializer.errors))
    return dict(serializer.validated_data)
