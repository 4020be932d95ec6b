"""Messages and enums of `platform.environments.v1` (generated from proto/ by scripts/generate-sdks)."""

# ruff: noqa: F401,F403
from platform_sdk._generated.platform.environments.v1.resources_pb2 import *
from platform_sdk._generated.platform.environments.v1.service_pb2 import *
