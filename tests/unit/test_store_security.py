"""The store's side of signed state: revoked members, owner-only kinds, shared kinds, and
malformed rows from the wire."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.rows import SCHEMAS, Row
from tests.unit.factories import make_keys, node_row


def endpoint_row(owner, version: int, eid: str = "e1", deleted: bool = False) -> Row:
    data = {"name": "web", "network": "n1", "node": owner.node_id, "ip": "10.10.0.2",
            "mac": "02:6d:0a:0a:00:02", "netns": "/run/netns/x", "owns_netns": True, "ifname": "eth0",
            "created": 1}
    return Row("endpoint", eid, owner.node_id, version, deleted, data).signed(owner)


def revocation(by, target, version: int, deleted: bool = False) -> Row:
    return Row("revocation", target.node_id, by.node_id, version, deleted,
               {"name": "victim", "reason": "test"}).signed(by)


def test_rows_of_a_revoked_member_are_refused_until_it_is_let_back(store):
    a, b = make_keys(), make_keys()
    store.merge([node_row(a, 1), node_row(b, 1)])
    store.merge([revocation(a, b, 2)])
    assert [n.id for n in store.nodes()] == [a.node_id]  # no longer a member
    changed, refused = store.merge([endpoint_row(b, 3)])
    assert changed == [] and refused and "removed from the cluster" in refused[0]
    changed, refused = store.merge([node_row(b, 4, transit_ip="10.77.0.9")])
    assert changed == [] and "removed from the cluster" in refused[0]
    # The tombstone of the revocation (a rejoin with the token) lets its rows in again.
    store.merge([revocation(a, b, 5, deleted=True)])
    changed, refused = store.merge([endpoint_row(b, 6)])
    assert len(changed) == 1 and refused == []


def test_owner_only_kinds_cannot_be_taken_over_but_shared_ones_can(store):
    a, b = make_keys(), make_keys()
    store.merge([node_row(a, 1), node_row(b, 1)])
    store.merge([endpoint_row(a, 2)])
    stolen = endpoint_row(b, 3)  # same id, owner b
    changed, refused = store.merge([stolen])
    assert changed == [] and "may not overwrite" in refused[0]
    net = {"name": "n", "driver": "overlay", "subnet": "10.10.0.0/24", "gateway": "10.10.0.1", "vni": 4097,
           "labels": {}, "created": 2}
    store.merge([Row("network", "n1", a.node_id, 2, False, net).signed(a)])
    changed, refused = store.merge([Row("network", "n1", b.node_id, 3, True, net).signed(b)])
    assert len(changed) == 1 and refused == []  # any member may remove a network, as in a swarm


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=6), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_row_decoder_never_crashes(obj):
    """Anything from the wire is a Row or a ValueError, nothing else."""
    try:
        row = Row.from_json(obj)
    except ValueError:
        return
    assert row.kind in SCHEMAS and set(row.data) == set(SCHEMAS[row.kind])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["kind", "id", "owner", "version", "deleted", "data", "sig"]),
                       json_values, max_size=7))
def test_malformed_rows_store_nothing(store, obj):
    """Each example starts from the store as the previous ones left it: only the digest
    before and after this example's row is compared."""
    a = make_keys()
    store.merge([node_row(a, 1)])
    before = store.digest()
    try:
        row = Row.from_json({**node_row(a, 5).to_json(), **obj})
    except ValueError:
        return
    store.merge([row])
    after = store.digest()
    # Only a row that really is a's, correctly signed, may change anything.
    assert after == before or row.sig == node_row(a, 5).sig
