"""Messages and enums of `platform.secrets.v1` (generated from proto/ by scripts/generate-sdks)."""

# ruff: noqa: F401,F403
from platform_sdk._generated.platform.secrets.v1.secrets_pb2 import *
