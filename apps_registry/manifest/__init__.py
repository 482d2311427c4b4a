"""The app manifest: YAML in, an immutable :class:`CompiledApp` out (see ``compiler``)."""

from .compiled import CompiledApp
from .compiler import SCHEMA_VERSION, CompileResult, compile_manifest

__all__ = ["SCHEMA_VERSION", "CompileResult", "CompiledApp", "compile_manifest"]
