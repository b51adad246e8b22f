from __future__ import annotations

import pytest

from meshnet.errors import TokenError
from meshnet.token import CLUSTER_ID_BYTES, SECRET_BYTES, JoinToken, _b32, cluster_tag, secret_hash

SHAPE = "expected mnet1-<cluster>-<secret>-<check>"
CHARS = "bad characters or length"
CHECK = "check digits do not match"


@pytest.fixture
def token() -> JoinToken:
    return JoinToken.generate()


def test_generate_sizes(token):
    assert len(token.cluster_id) == CLUSTER_ID_BYTES
    assert len(token.secret) == SECRET_BYTES
    assert JoinToken.generate().secret != token.secret


def test_generate_keeps_a_given_cluster_id(token):
    again = JoinToken.generate(token.cluster_id)
    assert again.cluster_id == token.cluster_id
    assert again.secret != token.secret


def test_roundtrip(token):
    text = token.encode()
    assert text.startswith("mnet1-")
    assert JoinToken.parse(text) == token


def test_parse_tolerates_whitespace_and_case(token):
    assert JoinToken.parse(f"  {token.encode()}\n") == token
    head, rest = token.encode().split("-", 1)
    assert JoinToken.parse(f"{head}-{rest.upper()}") == token


def _parts(token: JoinToken) -> list[str]:
    return token.encode().split("-")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: ["mnet2", *p[1:]],
        lambda p: ["MNET1", *p[1:]],
        lambda p: p[:3],
        lambda p: [*p, "extra"],
        lambda p: p[:1],
    ],
    ids=["wrong-prefix", "prefix-case", "three-parts", "five-parts", "prefix-only"],
)
def test_wrong_shape(token, mangle):
    with pytest.raises(TokenError, match=SHAPE):
        JoinToken.parse("-".join(mangle(_parts(token))))


@pytest.mark.parametrize("text", ["", "   ", "SWMTKN-1-abc-def", "mnet1"])
def test_not_a_token_at_all(text):
    with pytest.raises(TokenError, match=SHAPE):
        JoinToken.parse(text)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: [p[0], "1" + p[1][1:], p[2], p[3]],  # '1' is not in the base32 alphabet
        lambda p: [p[0], p[1], p[2][:-1] + "!", p[3]],
        lambda p: [p[0], p[1][:-2], p[2], p[3]],  # too short
        lambda p: [p[0], p[1], p[2] + "aaaaaaaa", p[3]],  # too long
        lambda p: [p[0], _b32(b"x" * 15), p[2], p[3]],  # valid base32, wrong length
        lambda p: [p[0], p[1], _b32(b"x" * 33), p[3]],
        lambda p: [p[0], "", p[2], p[3]],
        lambda p: [p[0], p[1], "é" * 52, p[3]],
    ],
    ids=["bad-char-cluster", "bad-char-secret", "short", "long", "cluster-15-bytes", "secret-33-bytes",
         "empty-cluster", "non-ascii"],
)
def test_bad_base32_or_length(token, mangle):
    with pytest.raises(TokenError, match=CHARS):
        JoinToken.parse("-".join(mangle(_parts(token))))


def _flip(ch: str, alphabet: str) -> str:
    return alphabet[(alphabet.index(ch) + 1) % len(alphabet)]


@pytest.mark.parametrize("where", [1, 2, 3])
def test_typo_is_caught_by_check_digits(token, where):
    parts = _parts(token)
    alphabet = "0123456789abcdef" if where == 3 else "abcdefghijklmnopqrstuvwxyz234567"
    parts[where] = _flip(parts[where][0], alphabet) + parts[where][1:]
    with pytest.raises(TokenError, match=CHECK):
        JoinToken.parse("-".join(parts))


def test_missing_or_non_ascii_check_digits(token):
    parts = _parts(token)
    with pytest.raises(TokenError, match=CHECK):
        JoinToken.parse("-".join([*parts[:3], ""]))
    with pytest.raises(TokenError, match=CHECK):
        JoinToken.parse("-".join([*parts[:3], "ééé"]))


def test_cluster_tag_reveals_neither_id_nor_secret(token):
    tag = token.tag
    assert tag == cluster_tag(token.cluster_id)
    assert len(tag) == 16
    public = tag + secret_hash(token.secret)
    forms = (token.cluster_id.hex(), token.secret.hex(), _b32(token.cluster_id), _b32(token.secret))
    for secret_form in forms:
        assert secret_form not in public
        assert secret_form[:8] not in public


def test_tag_depends_only_on_cluster_id(token):
    assert JoinToken.generate(token.cluster_id).tag == token.tag
    assert JoinToken.generate().tag != token.tag


def test_derived_keys_differ(token):
    assert len(token.mac_key()) == 32 and len(token.box_key()) == 32
    assert token.mac_key() != token.box_key()
    assert token.mac_key() != JoinToken.generate(token.cluster_id).mac_key()


def test_undecodable_argv_bytes_in_check_digits(token):
    # sys.argv carries undecodable bytes as lone surrogates (surrogateescape)
    parts = _parts(token)
    with pytest.raises(TokenError, match=CHECK):
        JoinToken.parse("-".join([*parts[:3], "\udcff\udcfe"]))
