"""What one endpoint may resolve. Built by the agent from replicated rows (pure), served by
dns/server.py, answered by dns/answers.py.

Names are scoped to the endpoint's own networks: a service on another network is simply
absent from its view, so it gets NXDOMAIN.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DnsView:
    # lower-case name without a trailing dot -> IPv4 addresses. Holds, for the endpoint's
    # networks: "<service>" (its VIP, or every healthy task address in dnsrr mode),
    # "tasks.<service>", "<service>.<slot>", and every endpoint name.
    a: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # IPv4 address -> name, for PTR ("<service>.<slot>" for tasks, the endpoint name else).
    ptr: dict[str, str] = field(default_factory=dict)
    # Resolvers for every other name ("ip" or "ip:port"), tried in order.
    forwarders: tuple[str, ...] = ()
    # The endpoint's overlay subnets (CIDR). A PTR query for an address inside one of them that
    # is not in `ptr` gets NXDOMAIN instead of leaking to the host's resolvers.
    subnets: tuple[str, ...] = ()
