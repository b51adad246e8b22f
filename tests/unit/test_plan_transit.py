from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshnet.errors import MeshnetError
from meshnet.plan.transit import active, allocate, must_move


@dataclass
class N:
    id: str
    transit_ip: str
    state: str = "active"
    version: int = 1
    deleted: bool = False


CIDR = "10.77.0.0/24"


def test_first_address_is_dot_one():
    assert allocate(CIDR, []) == "10.77.0.1"


def test_lowest_free_address():
    nodes = [N("a", "10.77.0.1"), N("b", "10.77.0.2"), N("c", "10.77.0.4")]
    assert allocate(CIDR, nodes) == "10.77.0.3"
    assert allocate(CIDR, [*nodes, N("d", "10.77.0.3")]) == "10.77.0.5"


@pytest.mark.parametrize("gone", [N("b", "10.77.0.2", state="left"), N("b", "10.77.0.2", deleted=True)])
def test_left_or_deleted_nodes_free_their_address(gone):
    assert allocate(CIDR, [N("a", "10.77.0.1"), gone]) == "10.77.0.2"


def test_full_range():
    nodes = [N(str(i), f"10.77.0.{i}") for i in (1, 2)]
    with pytest.raises(MeshnetError, match=r"10\.77\.0\.0/30 is full \(2 nodes\)"):
        allocate("10.77.0.0/30", nodes)


def test_full_range_with_a_left_node_has_room_again():
    nodes = [N("1", "10.77.0.1"), N("2", "10.77.0.2", state="left")]
    assert allocate("10.77.0.0/30", nodes) == "10.77.0.2"


def test_active_filter():
    nodes = [N("a", "1"), N("b", "2", state="left"), N("c", "3", deleted=True), N("d", "4", state="joining")]
    assert [n.id for n in active(nodes)] == ["a"]


def test_no_clash_no_move():
    a, b = N("a", "10.77.0.1"), N("b", "10.77.0.2")
    assert not must_move(a, [a, b])
    assert not must_move(b, [a, b])


@pytest.mark.parametrize(
    "a, b, loser",
    [
        (N("a", "10.77.0.5", version=1), N("b", "10.77.0.5", version=2), "b"),  # later claim moves
        (N("a", "10.77.0.5", version=3), N("b", "10.77.0.5", version=2), "a"),
        (N("a", "10.77.0.5", version=2), N("b", "10.77.0.5", version=2), "b"),  # tie: higher id moves
    ],
)
def test_clash_moves_exactly_one(a, b, loser):
    nodes = [a, b, N("c", "10.77.0.1")]
    moves = {n.id for n in (a, b) if must_move(n, nodes)}
    assert moves == {loser}
    # every node computes the same answer whatever the order it holds the rows in
    assert {n.id for n in (a, b) if must_move(n, nodes[::-1])} == {loser}


def test_three_way_clash_keeps_only_the_earliest():
    nodes = [N("c", "10.77.0.5", version=1), N("a", "10.77.0.5", version=2), N("b", "10.77.0.5", version=2)]
    assert [n.id for n in nodes if not must_move(n, nodes)] == ["c"]


@pytest.mark.parametrize("rival", [N("b", "10.77.0.5", version=1, state="left"),
                                   N("b", "10.77.0.5", version=1, deleted=True)])
def test_clash_with_a_gone_node_is_no_clash(rival):
    me = N("a", "10.77.0.5", version=5)
    assert not must_move(me, [me, rival])


def test_moved_node_gets_a_free_address():
    a, b = N("a", "10.77.0.1", version=1), N("b", "10.77.0.1", version=2)
    assert must_move(b, [a, b])
    others = [n for n in [a, b] if n.id != b.id]
    assert allocate(CIDR, others) == "10.77.0.2"
