from __future__ import annotations

from meshnet.cli.common import age, table


def test_table_aligns_columns():
    out = table(["NAME", "IP"], [["alpha", "10.77.0.1"], ["b", "10.77.0.22"]])
    assert out.splitlines() == [
        "NAME   IP",
        "alpha  10.77.0.1",
        "b      10.77.0.22",
    ]


def test_table_none_is_a_dash_and_values_are_stringified():
    out = table(["A", "B", "C"], [[None, 3, 1.5]])
    assert out.splitlines() == ["A  B  C", "-  3  1.5"]


def test_table_has_no_trailing_whitespace():
    out = table(["NAME", "NOTE"], [["longer-name", ""], ["x", None]])
    assert all(line == line.rstrip() for line in out.splitlines())
    assert out.splitlines() == ["NAME         NOTE", "longer-name", "x            -"]


def test_table_without_rows_is_the_header():
    assert table(["NAME", "STATE"], []) == "NAME  STATE"


def test_age():
    assert age(None) == "never"
    assert age(5) == "5s ago"
    assert age(119) == "119s ago"
    assert age(600) == "10m ago"
    assert age(7200) == "2h ago"
