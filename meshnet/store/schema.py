"""The tables as SQLAlchemy models, for alembic (migrations/env.py) and the schema tests only.

The agent does not import this (SQLAlchemy costs ~19 MB of RSS): it reads and writes
with the stdlib sqlite3 and the plain classes in models.py, whose COLUMNS must match
these (tests/unit/test_store.py checks). The schema itself is made and upgraded by the
alembic migrations."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Float, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from meshnet.rows import SCHEMAS


class Base(DeclarativeBase):
    pass


class Cluster(Base):
    """The one cluster this node belongs to (no row: not a member)."""

    __tablename__ = "cluster"
    id: Mapped[str] = mapped_column(String, primary_key=True)  # hex cluster id
    secret_hash: Mapped[str] = mapped_column(String)  # the secret itself is a 0600 file
    created: Mapped[float] = mapped_column(Float)
    settings: Mapped[dict] = mapped_column(JSON, default=dict)  # transit_cidr, network_pool ...


class Replicated:
    """Columns every replicated row carries (see meshnet.rows)."""

    owner: Mapped[str] = mapped_column(String, index=True)
    version: Mapped[int] = mapped_column(BigInteger)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    sig: Mapped[str] = mapped_column(String)
    received: Mapped[float] = mapped_column(Float)  # local time the row arrived (not replicated)


class Node(Replicated, Base):
    __tablename__ = "nodes"
    KIND = "node"
    DATA = tuple(SCHEMAS["node"])

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    identity_pub: Mapped[str] = mapped_column(String)
    wg_pub: Mapped[str] = mapped_column(String)
    endpoint: Mapped[str] = mapped_column(String)  # underlay ip:port of WireGuard
    control: Mapped[str] = mapped_column(String)  # underlay ip:port of the join listener
    transit_ip: Mapped[str] = mapped_column(String)
    state: Mapped[str] = mapped_column(String)  # active | left
    labels: Mapped[dict] = mapped_column(JSON, default=dict)


class Network(Replicated, Base):
    __tablename__ = "networks"
    KIND = "network"
    DATA = tuple(SCHEMAS["network"])

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String, index=True)
    driver: Mapped[str] = mapped_column(String)
    subnet: Mapped[str] = mapped_column(String)
    gateway: Mapped[str] = mapped_column(String)
    vni: Mapped[int] = mapped_column(BigInteger)
    labels: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[int] = mapped_column(BigInteger)
    options: Mapped[dict] = mapped_column(JSON, default=dict)  # driver options: {"mode": "l3"}


class Endpoint(Replicated, Base):
    __tablename__ = "endpoints"
    KIND = "endpoint"
    DATA = tuple(SCHEMAS["endpoint"])

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String, index=True)
    network: Mapped[str] = mapped_column(String, index=True)
    node: Mapped[str] = mapped_column(String)
    ip: Mapped[str] = mapped_column(String)
    mac: Mapped[str] = mapped_column(String)
    netns: Mapped[str] = mapped_column(String)
    owns_netns: Mapped[bool] = mapped_column(Boolean)
    ifname: Mapped[str] = mapped_column(String)
    created: Mapped[int] = mapped_column(BigInteger)


class IpamBlock(Replicated, Base):
    __tablename__ = "ipam_blocks"
    KIND = "ipam_block"
    DATA = tuple(SCHEMAS["ipam_block"])

    id: Mapped[str] = mapped_column(String, primary_key=True)
    network: Mapped[str] = mapped_column(String, index=True)
    cidr: Mapped[str] = mapped_column(String)


class Service(Replicated, Base):
    __tablename__ = "services"
    KIND = "service"
    DATA = tuple(SCHEMAS["service"])

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String, index=True)
    networks: Mapped[list] = mapped_column(JSON)
    replicas: Mapped[int] = mapped_column(BigInteger)
    endpoint_mode: Mapped[str] = mapped_column(String)
    env: Mapped[dict] = mapped_column(JSON)
    restart: Mapped[str] = mapped_column(String)
    constraints: Mapped[list] = mapped_column(JSON)
    command: Mapped[list] = mapped_column(JSON)
    vips: Mapped[dict] = mapped_column(JSON)
    created: Mapped[int] = mapped_column(BigInteger)
    spec: Mapped[int] = mapped_column(BigInteger)


class Task(Replicated, Base):
    __tablename__ = "tasks"
    KIND = "task"
    DATA = tuple(SCHEMAS["task"])

    id: Mapped[str] = mapped_column(String, primary_key=True)
    service: Mapped[str] = mapped_column(String, index=True)
    slot: Mapped[int] = mapped_column(BigInteger)
    node: Mapped[str] = mapped_column(String)
    state: Mapped[str] = mapped_column(String)
    endpoints: Mapped[dict] = mapped_column(JSON)
    since: Mapped[int] = mapped_column(BigInteger)
    error: Mapped[str] = mapped_column(String)
    restarts: Mapped[int] = mapped_column(BigInteger)
    spec: Mapped[int] = mapped_column(BigInteger)


class Revocation(Replicated, Base):
    __tablename__ = "revocations"
    KIND = "revocation"
    DATA = tuple(SCHEMAS["revocation"])

    id: Mapped[str] = mapped_column(String, primary_key=True)  # the revoked node's id
    name: Mapped[str] = mapped_column(String)
    reason: Mapped[str] = mapped_column(String)


class Secret(Replicated, Base):
    __tablename__ = "secrets"
    KIND = "secret"
    DATA = tuple(SCHEMAS["secret"])

    id: Mapped[str] = mapped_column(String, primary_key=True)
    secret: Mapped[str] = mapped_column(String)


MODELS: dict[str, type] = {m.KIND: m for m in (Node, Network, Endpoint, IpamBlock, Service, Task,
                                               Revocation, Secret)}
