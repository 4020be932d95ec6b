"""The platform API from Python.

The messages and service stubs are generated from the contract in ``proto/`` (see
``scripts/generate-sdks``); this module adds what every caller needs around them:

* :class:`Client` connects with a bearer token and sends it, with a fresh ``x-request-id``, on
  every call, and holds one stub per service (``client.catalog``, ``client.deployments``, ...);
* :meth:`Client.list` pages through any List method and yields its items;
* :meth:`Client.retry` re-runs an idempotent call while the server answers UNAVAILABLE or
  RESOURCE_EXHAUSTED;
* :meth:`Client.wait_for_deployment` waits until a deployment has finished.

Example::

    from platform_sdk import Client, catalog

    with Client("http://127.0.0.1:50051", token) as client:
        for entity in client.list(client.catalog.ListEntities,
                                  catalog.ListEntitiesRequest(parent="tenants/acme")):
            print(entity.metadata.name)
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any, Callable, Iterator, Optional, TypeVar

import grpc

from platform_sdk import audit, catalog, deployments, environments, iam, insights, secrets
from platform_sdk._generated.platform.audit.v1 import audit_pb2_grpc
from platform_sdk._generated.platform.catalog.v1 import catalog_pb2_grpc
from platform_sdk._generated.platform.deployments.v1 import service_pb2_grpc as deployments_grpc
from platform_sdk._generated.platform.environments.v1 import service_pb2_grpc as environments_grpc
from platform_sdk._generated.platform.iam.v1 import iam_pb2_grpc
from platform_sdk._generated.platform.insights.v1 import insights_pb2_grpc
from platform_sdk._generated.platform.secrets.v1 import secrets_pb2_grpc

__all__ = [
    "Client",
    "audit",
    "catalog",
    "deployments",
    "environments",
    "iam",
    "insights",
    "secrets",
    "TRANSIENT_CODES",
]

T = TypeVar("T")

#: Codes after which an idempotent call may simply be made again.
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

_FINISHED = frozenset(
    {
        deployments.DEPLOYMENT_STATE_SUCCEEDED,
        deployments.DEPLOYMENT_STATE_FAILED,
        deployments.DEPLOYMENT_STATE_CANCELLED,
    }
)


class _ClientCallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _Headers(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
):
    """Adds the bearer token and a request id (unless the caller set one) to every call."""

    def __init__(self, token: Optional[str]) -> None:
        self._authorization = f"Bearer {token}" if token else None

    def __repr__(self) -> str:  # never show the token
        return "_Headers(authorization=***)" if self._authorization else "_Headers()"

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or [])
        keys = {k for k, _ in metadata}
        if self._authorization and "authorization" not in keys:
            metadata.append(("authorization", self._authorization))
        if "x-request-id" not in keys:
            metadata.append(("x-request-id", str(uuid.uuid4())))
        return _ClientCallDetails(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


def _target(addr: str) -> tuple[str, bool]:
    """`http://host:port` (or a bare `host:port`) to a gRPC target, and whether to use TLS."""
    if addr.startswith("https://"):
        return addr[len("https://") :].rstrip("/"), True
    if addr.startswith("http://"):
        return addr[len("http://") :].rstrip("/"), False
    return addr, False


class Client:
    """A connection to the platform API with credentials, and a stub per service."""

    def __init__(
        self,
        addr: str,
        token: Optional[str] = None,
        *,
        attempts: int = 5,
        initial_delay: float = 0.1,
        max_delay: float = 5.0,
    ) -> None:
        target, tls = _target(addr)
        channel = (
            grpc.secure_channel(target, grpc.ssl_channel_credentials())
            if tls
            else grpc.insecure_channel(target)
        )
        self._raw_channel = channel
        self.channel = grpc.intercept_channel(channel, _Headers(token))
        self._attempts = attempts
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        self.deployments = deployments_grpc.DeploymentServiceStub(self.channel)
        self.environments = environments_grpc.EnvironmentServiceStub(self.channel)
        self.iam = iam_pb2_grpc.IamServiceStub(self.channel)
        self.insights = insights_pb2_grpc.InsightsServiceStub(self.channel)
        self.secrets = secrets_pb2_grpc.SecretServiceStub(self.channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def retry(self, method: Callable[..., T], request: Any, **kwargs: Any) -> T:
        """Calls ``method(request)``, again with exponential backoff and jitter while the server
        answers UNAVAILABLE or RESOURCE_EXHAUSTED. Only for idempotent calls: reads, and writes
        with a ``request_id`` (the server answers a retry with the first result)."""
        delay = self._initial_delay
        for attempt in range(1, self._attempts + 1):
            try:
                return method(request, **kwargs)
            except grpc.RpcError as error:
                if error.code() not in TRANSIENT_CODES or attempt == self._attempts:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._max_delay)
        raise AssertionError("unreachable")

    def list(self, method: Callable[..., Any], request: Any, items: Optional[str] = None) -> Iterator:
        """Yields every item of a List method (``client.catalog.ListEntities``), fetching each
        page when the previous one is used up. ``items`` names the response's repeated field;
        by default the one repeated message field of the response."""
        request_copy = type(request)()
        request_copy.CopyFrom(request)
        while True:
            page = self.retry(method, request_copy)
            field = items or _items_field(page)
            yield from getattr(page, field)
            if not page.next_page_token:
                return
            request_copy.page_token = page.next_page_token

    def wait_for_deployment(self, name: str, timeout: float = 600.0) -> deployments.Deployment:
        """Polls the deployment until it has finished (SUCCEEDED, FAILED or CANCELLED) and
        returns it; raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            deployment = self.retry(
                self.deployments.GetDeployment, deployments.GetDeploymentRequest(name=name)
            )
            if deployment.state in _FINISHED:
                return deployment
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"{name} did not finish within {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _items_field(page: Any) -> str:
    def repeated(f: Any) -> bool:
        return f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED

    fields = [
        f.name
        for f in page.DESCRIPTOR.fields
        if repeated(f)
        and f.message_type is not None
        and not f.message_type.GetOptions().map_entry
    ]
    if len(fields) != 1:
        raise ValueError(
            f"{page.DESCRIPTOR.full_name} has {len(fields)} repeated message fields; pass items="
        )
    return fields[0]
