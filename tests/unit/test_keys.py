from __future__ import annotations

import stat

import pytest
from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from meshnet.errors import MeshnetError
from meshnet.keys import IDENTITY_FILE, WIREGUARD_FILE, b64, load_or_create, node_id_for, unb64, verify


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_created_once_and_reused(tmp_path):
    first = load_or_create(tmp_path / "state")
    again = load_or_create(tmp_path / "state")
    assert again.node_id == first.node_id
    assert again.identity_pub == first.identity_pub
    assert again.wireguard_pub == first.wireguard_pub
    assert again.wireguard_private == first.wireguard_private


def test_two_state_dirs_get_different_keys(tmp_path):
    a, b = load_or_create(tmp_path / "a"), load_or_create(tmp_path / "b")
    assert a.node_id != b.node_id
    assert a.wireguard_pub != b.wireguard_pub


def test_key_files_are_private(tmp_path):
    load_or_create(tmp_path)
    for name in (IDENTITY_FILE, WIREGUARD_FILE):
        assert mode(tmp_path / name) == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_loose_mode_is_tightened_on_load(tmp_path):
    keys = load_or_create(tmp_path)
    (tmp_path / IDENTITY_FILE).chmod(0o644)
    assert load_or_create(tmp_path).node_id == keys.node_id
    assert mode(tmp_path / IDENTITY_FILE) == 0o600


def test_node_id_is_hash_of_identity_key(tmp_path):
    keys = load_or_create(tmp_path)
    pub = bytes(keys.identity.verify_key)
    assert keys.node_id == node_id_for(pub)
    assert keys.node_id == blake2b(pub, digest_size=8, encoder=RawEncoder).hex()
    assert len(keys.node_id) == 16


def test_sign_and_verify(tmp_path):
    keys = load_or_create(tmp_path)
    sig = keys.sign(b"hello")
    assert verify(keys.identity_pub, b"hello", sig)
    assert not verify(keys.identity_pub, b"hellO", sig)
    other = load_or_create(tmp_path / "other")
    assert not verify(other.identity_pub, b"hello", sig)


@pytest.mark.parametrize("pub, sig", [("not base64!", None), (None, "AAAA"), ("", "")])
def test_verify_with_malformed_inputs_is_false(tmp_path, pub, sig):
    keys = load_or_create(tmp_path)
    good_sig = keys.sign(b"m")
    assert verify(keys.identity_pub if pub is None else pub, b"m", good_sig if sig is None else sig) is False


@pytest.mark.parametrize("name", [IDENTITY_FILE, WIREGUARD_FILE])
@pytest.mark.parametrize("content", [b"garbage!!\n", b"", b64(b"short").encode(), b"\xff\xfe\x00"])
def test_corrupt_key_file_is_a_meshnet_error(tmp_path, name, content):
    load_or_create(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(MeshnetError, match="corrupt key file"):
        load_or_create(tmp_path)


def test_unb64_checks_length():
    assert unb64(b64(b"x" * 32), 32) == b"x" * 32
    with pytest.raises(ValueError):
        unb64(b64(b"x" * 31), 32)
    with pytest.raises(ValueError):
        unb64("@@@@")
