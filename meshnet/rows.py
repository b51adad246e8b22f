"""Replicated rows and their merge rule (pure: no database, no sockets).

Every piece of cluster state is a row with an owner, a version (HLC) and a tombstone
flag, signed by its owner's identity key. Only the owner writes a row, so the rule is
simple: the higher (version, owner) wins and a tie is the same write. Merging is
commutative, associative and idempotent, so nodes converge whatever order, duplication
or interleaving the rows arrive in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum

from meshnet.keys import NodeKeys, node_id_for, unb64, verify

# The data fields of each kind of row and their JSON types; the store's tables mirror
# them. Grows as state grows: network, endpoint, ipam block, service ...
SCHEMAS: dict[str, dict[str, type]] = {
    "node": {"name": str, "identity_pub": str, "wg_pub": str, "endpoint": str, "control": str,
             "transit_ip": str, "state": str, "labels": dict},
    # Cluster-scoped: any member may write it (owner = the last writer), like any swarm
    # manager may remove any network. `created` (HLC) is fixed at creation.
    "network": {"name": str, "driver": str, "subnet": str, "gateway": str, "vni": int,
                "labels": dict, "created": int, "options": dict},
    # Owned by the node that hosts the endpoint.
    "endpoint": {"name": str, "network": str, "node": str, "ip": str, "mac": str, "netns": str,
                 "owns_netns": bool, "ifname": str, "created": int},
    # A node's claim on a block of a network's subnet (id: network/block/owner).
    "ipam_block": {"network": str, "cidr": str},
    # Cluster-scoped, like networks. `vips` maps network id -> the service's VIP there.
    "service": {"name": str, "networks": list, "replicas": int, "endpoint_mode": str,
                "env": dict, "restart": str, "constraints": list, "command": list, "vips": dict,
                "created": int, "spec": int},
    # A member removed from the cluster by another (`meshnet node rm`); id: its node id.
    # Cluster-scoped; a tombstone lifts it (the node joined again with the token).
    "revocation": {"name": str, "reason": str},
    # The join secret after `meshnet token rotate` (id "join"); cluster-scoped. It travels
    # only through the tunnels and is stored, like the first one, root-only.
    "secret": {"secret": str},
    # Owned by the node that runs the task (id: service/slot/node).
    "task": {"service": str, "slot": int, "node": str, "state": str, "endpoints": dict,
             "since": int, "error": str, "restarts": int, "spec": int},
}
KINDS = tuple(SCHEMAS)
SHARED_KINDS = frozenset({"network", "service", "revocation", "secret"})


@dataclass(frozen=True)
class Row:
    kind: str
    id: str
    owner: str
    version: int
    deleted: bool = False
    data: dict = field(default_factory=dict)
    sig: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.id)

    def signing_bytes(self) -> bytes:
        body = [self.kind, self.id, self.owner, self.version, self.deleted, self.data]
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, keys: NodeKeys) -> Row:
        return Row(self.kind, self.id, self.owner, self.version, self.deleted, self.data,
                   keys.sign(self.signing_bytes()))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: object) -> Row:
        """Parse a row from the wire; raises ValueError on anything malformed."""
        if not isinstance(obj, dict):
            raise ValueError("row is not an object")
        kind, rid, owner = obj.get("kind"), obj.get("id"), obj.get("owner")
        version, deleted, data, sig = (obj.get("version"), obj.get("deleted"),
                                       obj.get("data"), obj.get("sig"))
        if kind not in KINDS:
            raise ValueError(f"unknown row kind {kind!r}")
        if not (isinstance(rid, str) and isinstance(owner, str) and isinstance(sig, str)):
            raise ValueError("row id, owner and sig must be strings")
        if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
            raise ValueError("row version must be a positive integer")
        if not isinstance(deleted, bool) or not isinstance(data, dict):
            raise ValueError("row deleted must be a bool and data an object")
        for name, typ in SCHEMAS[kind].items():
            if not isinstance(data.get(name), typ):
                raise ValueError(f"{kind} row field {name!r} must be {typ.__name__}")
        if set(data) - set(SCHEMAS[kind]):
            raise ValueError(f"{kind} row has unknown fields {sorted(set(data) - set(SCHEMAS[kind]))}")
        return cls(kind, rid, owner, version, deleted, data, sig)


class Outcome(Enum):
    NEW = "new"
    UPDATED = "updated"
    IGNORED = "ignored"


def newer(incoming: Row, existing: Row | None) -> Outcome:
    """Whether `incoming` should replace `existing` (the whole merge rule)."""
    if existing is None:
        return Outcome.NEW
    if (incoming.version, incoming.owner) > (existing.version, existing.owner):
        return Outcome.UPDATED
    return Outcome.IGNORED


def check_signature(row: Row, owner_identity: str | None) -> str | None:
    """Why a row must be refused, or None when its owner really signed it.

    Node rows certify themselves: the id is the hash of the identity key they carry.
    Other rows need their owner's node row to be known already.
    """
    if row.kind == "node":
        pub = row.data.get("identity_pub")
        if row.owner != row.id:
            return "a node row must be owned by that node"
        try:
            if not isinstance(pub, str) or node_id_for(unb64(pub, 32)) != row.id:
                return "node id does not match its identity key"
        except ValueError:
            return "node identity key is malformed"
        owner_identity = pub
    if owner_identity is None:
        return f"unknown owner {row.owner}"
    if not verify(owner_identity, row.signing_bytes(), row.sig):
        return f"bad signature from {row.owner}"
    return None
