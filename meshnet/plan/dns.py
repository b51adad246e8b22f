"""Per-namespace DNS views from rows (pure): what each local endpoint may resolve.

A namespace sees the names of the networks it is attached to, and nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol

from meshnet.dns.view import DnsView


class EndpointLike(Protocol):
    id: str
    name: str
    network: str
    node: str
    ip: str
    netns: str


class ServiceLike(Protocol):
    id: str
    name: str
    networks: list
    endpoint_mode: str
    vips: dict


class TaskLike(Protocol):
    service: str
    slot: int
    node: str
    state: str
    endpoints: dict


def _local_namespaces(me: str, endpoints: Iterable[EndpointLike]) -> dict[str, set[str]]:
    """netns path of each namespace on this node -> the networks it is attached to."""
    out: dict[str, set[str]] = defaultdict(set)
    for e in endpoints:
        if e.node == me:
            out[e.netns].add(e.network)
    return out


def views(me: str, endpoints: Iterable[EndpointLike], services: Iterable[ServiceLike],
          tasks: Iterable[TaskLike], alive: set[str], forwarders: tuple[str, ...],
          subnets: dict[str, str] | None = None) -> dict[str, DnsView]:
    """netns path of each local endpoint namespace -> its DnsView.

    Tasks count only when running on a node we believe alive, so a dead node's tasks
    drop out of every answer.
    """
    endpoints = list(endpoints)
    by_id = {e.id: e for e in endpoints}
    local_nets = _local_namespaces(me, endpoints)
    # Per network: name -> addresses, address -> name.
    names: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    ptr: dict[str, dict[str, str]] = defaultdict(dict)
    for e in endpoints:
        names[e.network][e.name.lower()].append(e.ip)
        ptr[e.network][e.ip] = e.name
    healthy: dict[str, list[TaskLike]] = defaultdict(list)
    for t in tasks:
        if t.state == "running" and t.node in alive:
            healthy[t.service].append(t)
    for s in services:
        for t in sorted(healthy.get(s.id, []), key=lambda t: t.slot):
            for net, eid in t.endpoints.items():
                ep = by_id.get(eid)
                if ep is None or net not in s.networks:
                    continue
                slot_name = f"{s.name}.{t.slot}".lower()
                names[net][f"tasks.{s.name}".lower()].append(ep.ip)
                names[net][slot_name].append(ep.ip)
                ptr[net][ep.ip] = f"{s.name}.{t.slot}"
                if s.endpoint_mode == "dnsrr":
                    names[net][s.name.lower()].append(ep.ip)
        if s.endpoint_mode == "vip":
            for net, vip in s.vips.items():
                names[net][s.name.lower()] = [vip]
                ptr[net][vip] = s.name
    out = {}
    for path, nets in local_nets.items():
        a: dict[str, list[str]] = defaultdict(list)
        p: dict[str, str] = {}
        for net in sorted(nets):
            for name, ips in names[net].items():
                a[name] += [ip for ip in ips if ip not in a[name]]
            p.update(ptr[net])
        cidrs = tuple(sorted({subnets[n] for n in nets if subnets and n in subnets}))
        out[path] = DnsView({k: tuple(v) for k, v in a.items()}, p, forwarders, cidrs)
    return out


def vip_backends(me: str, endpoints: Iterable[EndpointLike], services: Iterable[ServiceLike],
                 tasks: Iterable[TaskLike], alive: set[str]) -> dict[str, dict[str, tuple[str, ...]]]:
    """netns path of each local namespace -> {VIP: healthy task addresses} for vip services."""
    endpoints = list(endpoints)
    by_id = {e.id: e for e in endpoints}
    local_nets = _local_namespaces(me, endpoints)
    backends: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    tasks = [t for t in tasks if t.state == "running" and t.node in alive]
    for s in services:
        if s.endpoint_mode != "vip":
            continue
        for t in sorted((t for t in tasks if t.service == s.id), key=lambda t: t.slot):
            for net, eid in t.endpoints.items():
                ep = by_id.get(eid)
                if ep is not None and net in s.vips:
                    backends[net][s.vips[net]].append(ep.ip)
        for net, vip in s.vips.items():
            backends[net].setdefault(vip, [])
    return {path: {vip: tuple(ips) for net in sorted(nets) for vip, ips in backends[net].items()}
            for path, nets in local_nets.items()}
