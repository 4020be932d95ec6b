"""A small bot: reports the Components of a tenant whose owner is missing or not in the catalog.

It only reads (ListEntities, with each entity's relations) and prints a Markdown report; it opens
nothing. Run it with the platform's address, a token and the tenant:

    PLATFORM_ADDR=http://127.0.0.1:50051 PLATFORM_TOKEN=... python ownerless_report.py acme
"""

from __future__ import annotations

import os
import sys

from platform_sdk import Client, catalog


def ownerless(client: Client, tenant: str) -> list[tuple[str, str]]:
    """(reference, why) for each Component without an owner that exists in the catalog."""
    request = catalog.ListEntitiesRequest(
        parent=f"tenants/{tenant}",
        filter='kind = "Component"',
        view=catalog.ENTITY_VIEW_FULL,
        page_size=100,
    )
    found = []
    for entity in client.list(client.catalog.ListEntities, request):
        name = f"component:{entity.metadata.namespace or 'default'}/{entity.metadata.name}"
        owner = entity.component_spec.owner
        owned_by = [r for r in entity.relations if r.type == catalog.RELATION_TYPE_OWNED_BY]
        if not owner:
            found.append((name, "no owner"))
        elif not any(r.target_resolved for r in owned_by):
            target = owned_by[0].target_ref if owned_by else owner
            found.append((name, f"owner {target} is not in the catalog"))
    return found


def report(client: Client, tenant: str) -> str:
    rows = ownerless(client, tenant)
    lines = [f"# Components without a known owner in {tenant}", ""]
    if not rows:
        lines.append("Every Component has an owner in the catalog.")
    else:
        lines += ["| component | problem |", "|---|---|"]
        lines += [f"| {name} | {why} |" for name, why in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: ownerless_report.py TENANT", file=sys.stderr)
        return 2
    addr = os.environ.get("PLATFORM_ADDR", "http://127.0.0.1:50051")
    with Client(addr, os.environ.get("PLATFORM_TOKEN")) as client:
        sys.stdout.write(report(client, sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
