from rest_framework import serializers


class StrictBooleanField(serializers.BooleanField):
    """Only JSON true/false: "yes" or 1 for a flag is more often a client bug than intent."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)


class StrictCharField(serializers.CharField):
    """No silent coercion of numbers or lists to strings."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(f"must be a string, got {type(data).__name__}.")
        return super().to_internal_value(data)


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
