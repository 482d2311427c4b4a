"""How every endpoint reads its input: :func:`parse`, and the :class:`ApiView` base of the REST views.

One way to validate: a serializer, and on failure the project's own ``ValidationError`` naming each
field by its path (``images[0].mime``). It is raised, not returned as a DRF error, so the REST views
(through the exception handler) and the plain async views (through ``asyncviews``) answer the same
envelope. Plumbing: no app is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.views import APIView

from digitorn_site.api.exceptions import to_digitorn_error
from digitorn_site.api.jsonbody import DepthLimitedJSONParser
from digitorn_site.errors import ValidationError
from digitorn_site.principals import Principal


def parse(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """``data`` (a parsed JSON body, or a query dict) validated by ``serializer_class``.

    A body that is not a JSON object is refused first; a serializer may name a ``body_example`` for
    that message. Errors leave as :class:`ValidationError` (400) with ``details.errors`` listing every
    field's path and message.
    """
    if not isinstance(data, Mapping):
        example = getattr(serializer_class, "body_example", None)
        hint = f"; for example {example}" if example else ""
        raise ValidationError(f"The request body must be a JSON object, got {type(data).__name__}{hint}.")
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise to_digitorn_error(serializers.ValidationError(serializer.errors))
    return dict(serializer.validated_data)


class ApiView(APIView):
    """Thin base: API-key auth, scope permission, JSON only, the envelope via the exception handler."""

    required_scope: str | dict[str, str] | None = None
    # JSON nested thousands deep must answer 400, not escape DRF's parser as a RecursionError (500).
    parser_classes = [DepthLimitedJSONParser, MultiPartParser, FormParser]

    def parse(self, serializer_class: type[serializers.Serializer], data: Any = None) -> dict[str, Any]:
        """:func:`parse` of the request body (or of ``data``, such as the query string)."""
        return parse(serializer_class, self.request.data if data is None else data)

    @property
    def principal(self) -> Principal:
        return self.request.user
