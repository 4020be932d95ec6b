"""Messages and enums of `platform.catalog.v1` (generated from proto/ by scripts/generate-sdks)."""

# ruff: noqa: F401,F403
from platform_sdk._generated.platform.catalog.v1.resources_pb2 import *
from platform_sdk._generated.platform.catalog.v1.catalog_pb2 import *
