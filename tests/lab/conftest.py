"""Lab fixtures: simulated hosts in namespaces. Needs root; cleans up also on failure."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil

import pytest

from meshnet.lab import Lab

pytestmark = pytest.mark.lab


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session", autouse=True)
def _need_root_and_tools():
    missing = [t for t in ("ip", "nsenter", "unshare", "wireguard-go", "tcpdump", "ping")
               if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        pytest.fail(f"lab tests need root and {missing or 'nothing else'}: run scripts/test")


def unique_name(prefix: str) -> str:
    """Lab names that cannot clash with another run on the same machine."""
    return f"{prefix}{secrets.token_hex(3)}"


@pytest.fixture
def make_lab():
    labs: list[Lab] = []

    def make(hosts: int, prefix: str = "t") -> Lab:
        lab = Lab(unique_name(prefix))
        labs.append(lab)
        lab.up(hosts)
        return lab

    yield make
    for lab in labs:
        lab.down()


@contextlib.contextmanager
def cluster_lab(prefix: str, hosts: int, members: list[int] | None = None, **up):
    """A lab whose `members` (default: all hosts) form a cluster; removed afterwards, also
    on failure. The join token is left on the lab as `.token`."""
    lab = Lab(unique_name(prefix))
    try:
        lab.up(hosts, **up)
        lab.token = lab.form_cluster(members)
        yield lab
    finally:
        lab.down()
