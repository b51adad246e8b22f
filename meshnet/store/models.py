"""The cluster row and the replicated kinds as plain objects, one class per table.

COLUMNS maps each column to how it is stored: "str", "int", "float", "bool" (0/1) or
"json" (text). The tables are made and upgraded only by the alembic migrations;
schema.py declares the same tables for alembic, and a unit test keeps both in step.
`Base` (the SQLAlchemy declarative base) is loaded from schema.py on first use.
"""

from __future__ import annotations

from meshnet.rows import SCHEMAS

REPLICATED = {"owner": "str", "version": "int", "deleted": "bool", "sig": "str", "received": "float"}


class Model:
    TABLE: str = ""
    COLUMNS: dict[str, str] = {}
    DEFAULTS: dict[str, object] = {}

    def __init__(self, **values) -> None:
        unknown = set(values) - set(self.COLUMNS)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no column {', '.join(sorted(unknown))}")
        for c in self.COLUMNS:
            setattr(self, c, values.get(c))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'id', '?')}>"


class Replicated(Model):
    """A replicated kind (see meshnet.rows): its data columns (TYPES, in SCHEMAS order as
    DATA) plus id and the columns every replicated row carries."""

    KIND: str = ""
    TYPES: dict[str, str] = {}
    DATA: tuple[str, ...] = ()

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        assert set(cls.TYPES) == set(SCHEMAS[cls.KIND]), cls.KIND
        cls.DATA = tuple(SCHEMAS[cls.KIND])
        cls.COLUMNS = {"id": "str", **cls.TYPES, **REPLICATED}
        cls.DEFAULTS = {"deleted": False, **cls.DEFAULTS}


class Cluster(Model):
    """The one cluster this node belongs to (no row: not a member)."""

    TABLE = "cluster"
    COLUMNS = {"id": "str", "secret_hash": "str", "created": "float", "settings": "json"}
    DEFAULTS = {"settings": dict}


class Node(Replicated):
    KIND, TABLE = "node", "nodes"
    TYPES = {"name": "str", "identity_pub": "str", "wg_pub": "str", "endpoint": "str",
             "control": "str", "transit_ip": "str", "state": "str", "labels": "json"}
    DEFAULTS = {"labels": dict}


class Network(Replicated):
    KIND, TABLE = "network", "networks"
    TYPES = {"name": "str", "driver": "str", "subnet": "str", "gateway": "str", "vni": "int",
             "labels": "json", "created": "int", "options": "json"}
    DEFAULTS = {"labels": dict, "options": dict}

    @property
    def mode(self) -> str:
        return (self.options or {}).get("mode", "l2")


class Endpoint(Replicated):
    KIND, TABLE = "endpoint", "endpoints"
    TYPES = {"name": "str", "network": "str", "node": "str", "ip": "str", "mac": "str",
             "netns": "str", "owns_netns": "bool", "ifname": "str", "created": "int"}


class IpamBlock(Replicated):
    KIND, TABLE = "ipam_block", "ipam_blocks"
    TYPES = {"network": "str", "cidr": "str"}


class Service(Replicated):
    KIND, TABLE = "service", "services"
    TYPES = {"name": "str", "networks": "json", "replicas": "int", "endpoint_mode": "str",
             "env": "json", "restart": "str", "constraints": "json", "command": "json",
             "vips": "json", "created": "int", "spec": "int"}


class Task(Replicated):
    KIND, TABLE = "task", "tasks"
    TYPES = {"service": "str", "slot": "int", "node": "str", "state": "str", "endpoints": "json",
             "since": "int", "error": "str", "restarts": "int", "spec": "int"}


class Revocation(Replicated):
    KIND, TABLE = "revocation", "revocations"
    TYPES = {"name": "str", "reason": "str"}


class Secret(Replicated):
    KIND, TABLE = "secret", "secrets"
    TYPES = {"secret": "str"}


MODELS: dict[str, type[Replicated]] = {m.KIND: m for m in (Node, Network, Endpoint, IpamBlock, Service,
                                                      Task, Revocation, Secret)}


def __getattr__(name: str):
    if name == "Base":  # alembic's env.py and the schema tests
        from meshnet.store.schema import Base

        return Base
    raise AttributeError(name)
