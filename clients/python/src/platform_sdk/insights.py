"""Messages and enums of `platform.insights.v1` (generated from proto/ by scripts/generate-sdks)."""

# ruff: noqa: F401,F403
from platform_sdk._generated.platform.insights.v1.resources_pb2 import *
from platform_sdk._generated.platform.insights.v1.insights_pb2 import *
