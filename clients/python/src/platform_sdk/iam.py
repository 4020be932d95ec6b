"""Messages and enums of `platform.iam.v1` (generated from proto/ by scripts/generate-sdks)."""

# ruff: noqa: F401,F403
from platform_sdk._generated.platform.iam.v1.iam_pb2 import *
