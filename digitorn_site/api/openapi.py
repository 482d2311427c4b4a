"""drf-spectacular glue: the API-key auth scheme and a schema class that reads view attributes.

REST views are plain ``ApiView``s (no generic serializers), so they declare what to document:
``request_serializer`` for the body, ``query_serializer`` for the query string and ``response_schema`` (a serializer or an OpenApiTypes value)
for ``data``; the postprocessing hook in ``schema.py`` wraps it in the envelope.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes

from digitorn_site.api.base import ApiView


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "digitorn_site.api.auth.ApiKeyAuthentication"
    name = ["bearer", "apiKey"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "http", "scheme": "bearer"},
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        ]


class ViewAttributeSchema(AutoSchema):
    def _declared(self, name: str):
        value = getattr(self.view, name, None)
        if isinstance(value, dict):
            return value.get(self.method.upper())
        return value

    def get_request_serializer(self):
        if self.method.upper() in ("GET", "DELETE", "HEAD"):
            return None
        return self._declared("request_serializer")

    def get_override_parameters(self):
        # ``query_serializer`` documents the query string (drf-spectacular explodes it into parameters).
        declared = self._declared("query_serializer")
        return [*super().get_override_parameters(), *([declared] if declared is not None else [])]

    def get_response_serializers(self):
        declared = self._declared("response_schema")
        # Undeclared views promise nothing about ``data`` rather than something false.
        return declared if declared is not None else OpenApiTypes.ANY

    def get_operation_id(self):
        name = self.view.__class__.__name__.removesuffix("View")
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
        return f"{snake}_{self.method.lower()}"

    def get_description(self):
        # The base class's docstring says nothing about a particular endpoint.
        doc = self.view.__class__.__doc__
        return doc.strip() if doc and doc is not ApiView.__doc__ else ""
