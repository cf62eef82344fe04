"""Each instance gets its own loopback address, as VMs behind a load balancer each have their own IP.

Linux routes all of 127.0.0.0/8 to the loopback interface, so any address in the pool can be bound
without configuration. The pool is a setting so that two servers on one host (tests, say) never hand
out the same address.
"""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.orm import Session

from scaleset.domain.errors import ArmError
from scaleset.store.tables import Instance

DEFAULT_POOL = "127.42.0.0/16"


def parse_pool(pool: str) -> ipaddress.IPv4Network:
    network = ipaddress.IPv4Network(pool, strict=False)
    if not network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
        raise ValueError(f"the address pool {pool} must lie inside 127.0.0.0/8 (loopback)")
    return network


def allocate_addresses(session: Session, pool: ipaddress.IPv4Network, count: int) -> list[str]:
    """The `count` lowest free addresses of the pool (network and broadcast addresses excluded)."""
    used = set(session.scalars(select(Instance.address)))
    free: list[str] = []
    for host in pool.hosts():
        text = str(host)
        if text not in used:
            free.append(text)
            if len(free) == count:
                return free
    raise ArmError(
        409,
        "AllocationFailed",
        f"The instance address pool {pool} has no {count} free addresses left.",
        "sku.capacity",
    )
