from __future__ import annotations

import pytest
from factories import make_keys, node_row

from meshnet.rows import Outcome, Row, check_signature, newer


@pytest.fixture(scope="module")
def keys():
    return make_keys()


@pytest.fixture(scope="module")
def other():
    return make_keys()


def good_json(keys) -> dict:
    return node_row(keys, 100).to_json()


# -- from_json ---------------------------------------------------------------------

def test_json_roundtrip(keys):
    row = node_row(keys, 100, labels={"zone": "a"})
    assert Row.from_json(row.to_json()) == row
    assert row.key == ("node", keys.node_id)


@pytest.mark.parametrize("obj", [None, [], "row", 1])
def test_not_an_object(obj):
    with pytest.raises(ValueError, match="not an object"):
        Row.from_json(obj)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kind", "network-that-does-not-exist", "unknown row kind"),
        ("kind", None, "unknown row kind"),
        ("id", 5, "must be strings"),
        ("owner", None, "must be strings"),
        ("sig", b"x", "must be strings"),
        ("version", 0, "positive integer"),
        ("version", -3, "positive integer"),
        ("version", 1.5, "positive integer"),
        ("version", "7", "positive integer"),
        ("version", True, "positive integer"),
        ("deleted", 0, "deleted must be a bool"),
        ("deleted", "false", "deleted must be a bool"),
        ("data", [], "data an object"),
        ("data", None, "data an object"),
    ],
)
def test_bad_envelope_field(keys, field, value, message):
    obj = good_json(keys)
    obj[field] = value
    with pytest.raises(ValueError, match=message):
        Row.from_json(obj)


@pytest.mark.parametrize("field", ["kind", "id", "owner", "version", "deleted", "data", "sig"])
def test_missing_envelope_field(keys, field):
    obj = good_json(keys)
    del obj[field]
    with pytest.raises(ValueError):
        Row.from_json(obj)


@pytest.mark.parametrize(
    "name, value",
    [("name", 1), ("identity_pub", None), ("wg_pub", []), ("endpoint", 1.0), ("control", {}),
     ("transit_ip", 10), ("state", True), ("labels", []), ("labels", "zone=a")],
)
def test_bad_data_field_type(keys, name, value):
    obj = good_json(keys)
    obj["data"][name] = value
    with pytest.raises(ValueError, match=f"field '{name}' must be"):
        Row.from_json(obj)


@pytest.mark.parametrize("name", ["name", "identity_pub", "labels"])
def test_missing_data_field(keys, name):
    obj = good_json(keys)
    del obj["data"][name]
    with pytest.raises(ValueError, match=f"field '{name}'"):
        Row.from_json(obj)


def test_unknown_data_field(keys):
    obj = good_json(keys)
    obj["data"]["evil"] = "x"
    with pytest.raises(ValueError, match=r"unknown fields \['evil'\]"):
        Row.from_json(obj)


# -- signatures --------------------------------------------------------------------

def test_node_row_certifies_itself(keys):
    assert check_signature(node_row(keys, 5), None) is None
    assert check_signature(node_row(keys, 6, deleted=True), None) is None


def test_node_row_owned_by_another_node(keys, other):
    row = Row("node", keys.node_id, other.node_id, 5, False, node_row(keys, 5).data).signed(other)
    assert check_signature(row, other.identity_pub) == "a node row must be owned by that node"


def test_node_row_with_someone_elses_identity(keys, other):
    # other signs a row claiming keys' id but carrying its own identity key
    row = Row("node", keys.node_id, keys.node_id, 5, False, node_row(other, 5).data).signed(other)
    assert check_signature(row, None) == "node id does not match its identity key"


@pytest.mark.parametrize("pub", ["not base64!", "AAAA", ""])
def test_node_row_with_malformed_identity(keys, pub):
    row = node_row(keys, 5, identity_pub=pub)
    assert check_signature(row, None) == "node identity key is malformed"


def test_forged_signature(keys, other):
    row = node_row(keys, 5)
    forged = Row(row.kind, row.id, row.owner, row.version, row.deleted, row.data,
                 other.sign(row.signing_bytes()))
    assert check_signature(forged, None) == f"bad signature from {keys.node_id}"
    unsigned = Row(row.kind, row.id, row.owner, row.version, row.deleted, row.data)
    assert check_signature(unsigned, None) == f"bad signature from {keys.node_id}"


@pytest.mark.parametrize(
    "change",
    [
        {"version": 6},
        {"deleted": True},
        {"data": "transit_ip"},
        {"data": "labels"},
    ],
)
def test_tampered_row(keys, change):
    row = node_row(keys, 5)
    version = change.get("version", row.version)
    deleted = change.get("deleted", row.deleted)
    data = dict(row.data)
    if change.get("data") == "transit_ip":
        data["transit_ip"] = "10.77.0.99"
    if change.get("data") == "labels":
        data["labels"] = {"role": "db"}
    tampered = Row(row.kind, row.id, row.owner, version, deleted, data, row.sig)
    assert check_signature(tampered, None) == f"bad signature from {keys.node_id}"


def test_non_node_row_needs_known_owner(keys):
    row = Row("network", "n1", keys.node_id, 5, False, {"name": "appnet"}).signed(keys)
    assert check_signature(row, None) == f"unknown owner {keys.node_id}"
    assert check_signature(row, keys.identity_pub) is None
    assert check_signature(row, make_keys().identity_pub) == f"bad signature from {keys.node_id}"


def test_signing_bytes_are_canonical(keys):
    a = Row("node", "x", "x", 1, False, {"b": 1, "a": 2})
    b = Row("node", "x", "x", 1, False, {"a": 2, "b": 1})
    assert a.signing_bytes() == b.signing_bytes()


# -- merge rule --------------------------------------------------------------------

def _r(version: int, owner: str = "o1", rid: str = "r") -> Row:
    return Row("node", rid, owner, version)


def test_newer():
    assert newer(_r(1), None) is Outcome.NEW
    assert newer(_r(2), _r(1)) is Outcome.UPDATED
    assert newer(_r(1), _r(2)) is Outcome.IGNORED
    assert newer(_r(2), _r(2)) is Outcome.IGNORED  # the same write again
    assert newer(_r(2, "o2"), _r(2, "o1")) is Outcome.UPDATED  # tie broken by owner
    assert newer(_r(2, "o1"), _r(2, "o2")) is Outcome.IGNORED


def test_newer_picks_one_winner_whatever_the_order():
    rows = [_r(v, o) for v in (1, 3, 2) for o in ("b", "a")]
    for start in range(len(rows)):
        best = None
        for row in rows[start:] + rows[:start]:
            if newer(row, best) is not Outcome.IGNORED:
                best = row
        assert (best.version, best.owner) == (3, "b")
