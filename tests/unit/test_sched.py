"""Placement: even spread, stable under scaling, only a dead node's slots move."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from meshnet.errors import MeshnetError
from meshnet.sched import Candidate, eligible, parse_constraint, place

NODES = [Candidate(f"n{i}", f"h{i}", {"zone": "a" if i % 2 else "b"}) for i in range(1, 6)]


@pytest.mark.parametrize("replicas", [1, 3, 5, 7, 12])
def test_spread_is_even(replicas):
    counts = Counter(place("svc", replicas, [], NODES).values())
    assert sum(counts.values()) == replicas
    assert max(counts.values()) - min(counts.get(n.id, 0) for n in NODES) <= 1


def test_same_answer_whatever_the_order_of_nodes():
    answers = {tuple(place("svc", 7, [], perm).items()) for perm in itertools.permutations(NODES[:4])}
    assert len(answers) == 1


def test_scaling_never_moves_a_slot():
    small, big = place("svc", 4, [], NODES), place("svc", 9, [], NODES)
    assert all(big[s] == n for s, n in small.items())


def test_a_death_moves_only_the_dead_nodes_slots_and_they_come_back():
    before = place("svc", 6, [], NODES)
    dead = before[2]
    alive = {n.id for n in NODES} - {dead}
    after = place("svc", 6, [], NODES, alive)
    assert set(after) == set(before)
    assert all(after[s] == n for s, n in before.items() if n != dead)
    assert dead not in after.values()
    counts = Counter(after.values())
    assert max(counts.values()) - min(counts.get(n, 0) for n in alive) <= 1
    assert place("svc", 6, [], NODES, {n.id for n in NODES}) == before


def test_constraints():
    out = place("svc", 4, ["node.labels.zone==a"], NODES)
    assert set(out.values()) <= {"n1", "n3", "n5"}
    assert place("svc", 2, ["node.name==h2"], NODES) == {1: "n2", 2: "n2"}
    assert place("svc", 2, ["node.name!=h2", "node.labels.zone==b"], NODES) == {1: "n4", 2: "n4"}
    assert place("svc", 3, ["node.name==nowhere"], NODES) == {}
    assert place("svc", 3, [], NODES, alive=set()) == {}
    assert eligible(NODES[0], ["node.id==n1"]) and not eligible(NODES[0], ["node.id!=n1"])


@pytest.mark.parametrize("bad", ["bogus", "node.cpu==2", "node.name=x", "node.labels.==x", "node.name=="])
def test_bad_constraints(bad):
    with pytest.raises(MeshnetError, match="invalid constraint"):
        parse_constraint(bad)
