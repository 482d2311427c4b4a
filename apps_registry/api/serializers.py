from rest_framework import serializers

from digitorn_site.api.fields import StrictBooleanField, StrictCharField


class DeploySerializer(serializers.Serializer):
    yaml_path = StrictCharField(max_length=4096, trim_whitespace=False)
    force = StrictBooleanField(required=False, default=False)
    # {KEY: value}: applied to the compile and stored encrypted for the app (never echoed).
    secrets = serializers.JSONField(required=False, default=None)


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    force = serializers.BooleanField(required=False, default=False)
    secrets = serializers.CharField(required=False, default="", allow_blank=True, trim_whitespace=False)
    # JSON {relpath: content}: the files beside the manifest ({{prompt.X}}, {{asset.X}}), <= 5 MiB.
    assets = serializers.CharField(required=False, default="", allow_blank=True, trim_whitespace=False)


class SecretValueSerializer(serializers.Serializer):
    value = StrictCharField(max_length=65536, trim_whitespace=False, allow_blank=True)
