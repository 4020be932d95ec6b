"""Messages and enums of `platform.audit.v1` (generated from proto/ by scripts/generate-sdks)."""

# ruff: noqa: F401,F403
from platform_sdk._generated.platform.audit.v1.audit_pb2 import *
