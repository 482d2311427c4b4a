"""Request bodies of the conversation endpoints; errors name the field."""

from __future__ import annotations

import re
from collections.abc import Mapping

from rest_framework import serializers

from digitorn_site.api.fields import StrictCharField, StrictIntegerField
from digitorn_site.converters import NameConverter
from digitorn_site.errors import UnsupportedMediaTypeError

SESSION_ID = re.compile(rf"^{NameConverter.regex}$")


def _session_id(value: str) -> str:
    if not SESSION_ID.match(value):
        raise serializers.ValidationError(
            "use 1-200 characters from letters, digits, '_', '.', ':' and '-' (it appears in URLs)."
        )
    return value


MAX_MESSAGE_BYTES = 1024 * 1024  # the original's per-message cap (BUG-062), in bytes of UTF-8
MAX_IMAGES = 10
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # decoded
QUEUE_MODES = ("async", "wait", "replace_last")
INPUT_TYPES = ("text", "image", "file", "json", "any")


class MessageTextField(StrictCharField):
    """A message: non-empty text up to 1 MiB of UTF-8 (a character count would let 4-byte characters
    through at four times the size)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_MESSAGE_BYTES:
            raise serializers.ValidationError(
                f"at most {MAX_MESSAGE_BYTES} bytes of UTF-8 (1 MiB); this one is {size} bytes."
            )
        return value


class ImageSerializer(serializers.Serializer):
    data = StrictCharField(trim_whitespace=False, help_text="base64 of the image bytes")
    mime = StrictCharField(max_length=100, help_text="an image/* media type")
    name = StrictCharField(max_length=255, required=False, allow_blank=True, default="")

    def validate_data(self, value: str) -> str:
        import base64
        import binascii

        if len(value) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
            raise serializers.ValidationError(f"an image may be at most {MAX_IMAGE_BYTES} bytes.")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("must be base64 (the image's bytes, standard alphabet).")
        return value


class ImageListField(serializers.ListField):
    def __init__(self, **kwargs):
        super().__init__(child=ImageSerializer(), max_length=MAX_IMAGES, required=False, default=list, **kwargs)


def _refuse_non_images(data: Mapping) -> None:
    """415 for an attachment that is not an image (the original's answer, BUG-091/092: audio sent
    in ``images``), before the field-by-field validation."""
    images = data.get("images")
    if not isinstance(images, list):
        return
    for index, image in enumerate(images):
        mime = image.get("mime") if isinstance(image, Mapping) else None
        if isinstance(mime, str) and not mime.lower().startswith("image/"):
            raise UnsupportedMediaTypeError(
                f"images[{index}].mime: '{mime[:100]}' is not an image type; send image/* only.",
                details={"images": {str(index): {"mime": [f"'{mime[:100]}' is not image/*."]}}},
            )


class _MessageBody(serializers.Serializer):
    """Fields every message-taking POST accepts (the original's ``SessionMessageRequest``)."""

    images = ImageListField(help_text="[{data: base64, mime: image/*, name}], at most 10; accepted, not stored")
    workspace = StrictCharField(
        max_length=4096, required=False, allow_blank=True, help_text="accepted and ignored (see README)"
    )
    queue_mode = StrictCharField(required=False, default="async", help_text="async (default) | wait | replace_last")
    client_message_id = StrictCharField(max_length=200, required=False, allow_blank=True, default="")

    def to_internal_value(self, data):
        if isinstance(data, Mapping):  # a 415 for a non-image comes before any field's 400
            _refuse_non_images(data)
        return super().to_internal_value(data)

    def validate_queue_mode(self, value: str) -> str:
        if value not in QUEUE_MODES:
            raise serializers.ValidationError(f"'{value}' is not a queue mode; use one of {', '.join(QUEUE_MODES)}.")
        return value


class ChatSerializer(_MessageBody):
    session_id = StrictCharField(validators=[_session_id])
    message = MessageTextField()


class MessageSerializer(_MessageBody):
    message = MessageTextField()


class RunSerializer(serializers.Serializer):
    input = MessageTextField()
    input_type = StrictCharField(required=False, default="text", help_text="text | image | file | json | any")

    def validate_input_type(self, value: str) -> str:
        if value not in INPUT_TYPES:
            raise serializers.ValidationError(f"'{value}' is not an input type; use one of {', '.join(INPUT_TYPES)}.")
        return value


class QuotaSerializer(serializers.Serializer):
    rpm = StrictIntegerField(min_value=1, max_value=1_000_000, required=False)
    limit = StrictIntegerField(min_value=1, max_value=1_000_000, required=False, help_text="alias of rpm")

    def validate(self, attrs):
        rpm = attrs.get("rpm", attrs.get("limit"))
        if rpm is None:
            raise serializers.ValidationError({"rpm": ["is required (requests per minute; `limit` also works)."]})
        return {"rpm": rpm}


class SessionListQuerySerializer(serializers.Serializer):
    limit = serializers.IntegerField(min_value=0, max_value=200, default=50, help_text="0 = all")
    offset = serializers.IntegerField(min_value=0, default=0)


class HistoryQuerySerializer(serializers.Serializer):
    since_seq = serializers.IntegerField(min_value=0, default=0)
    events_limit = serializers.IntegerField(min_value=1, max_value=10_000, default=1000)


class NotificationsSerializer(serializers.Serializer):
    session_id = StrictCharField(validators=[_session_id])
