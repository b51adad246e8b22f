"""Real keys and signed node rows for the unit tests."""

from __future__ import annotations

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from meshnet.keys import NodeKeys
from meshnet.rows import Row


def make_keys() -> NodeKeys:
    return NodeKeys(SigningKey.generate(), PrivateKey.generate())


def node_data(keys: NodeKeys, **over) -> dict:
    data = {
        "name": f"host-{keys.node_id[:4]}",
        "identity_pub": keys.identity_pub,
        "wg_pub": keys.wireguard_pub,
        "endpoint": "192.0.2.1:51820",
        "control": "192.0.2.1:7946",
        "transit_ip": "10.77.0.1",
        "state": "active",
        "labels": {},
    }
    data.update(over)
    return data


def node_row(keys: NodeKeys, version: int, deleted: bool = False, **over) -> Row:
    return Row("node", keys.node_id, keys.node_id, version, deleted, node_data(keys, **over)).signed(keys)
