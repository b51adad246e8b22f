from __future__ import annotations

import copy

import pytest
from nacl.public import PrivateKey

from meshnet.errors import JoinRefused
from meshnet.join import (
    MAX_SKEW,
    VERSION,
    NonceCache,
    Request,
    _request_mac,
    open_request,
    open_response,
    seal_request,
    seal_response,
)
from meshnet.keys import b64
from meshnet.token import JoinToken

NOW = 1_800_000_000.0
MALFORMED = "^malformed join request$"
WRONG_SECRET = "wrong token: the secret does not match"
OTHER_CLUSTER = "the token is for another cluster"
REPLAY = "replayed join request"
SKEW = "timestamp is .* off"


@pytest.fixture
def token() -> JoinToken:
    return JoinToken.generate()


@pytest.fixture
def nonces() -> NonceCache:
    return NonceCache()


def request(token: JoinToken, kind: str = "hello", payload: dict | None = None, now: float = NOW) -> Request:
    return seal_request(token, kind, {"name": "h1"} if payload is None else payload, now=now)


def remac(token: JoinToken, env: dict) -> dict:
    """What only a holder of the secret can do: make a MAC valid for altered fields."""
    env = dict(env)
    env["mac"] = _request_mac(token, env)
    return env


# -- the happy path ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hello", "register"])
def test_request_and_reply_roundtrip(token, nonces, kind):
    payload = {"name": "h1", "wg_pub": "abc", "labels": {"zone": "a"}, "n": [1, 2]}
    req = request(token, kind, payload)
    opened = open_request(copy.deepcopy(req.envelope), token, nonces, NOW)
    assert opened.kind == kind
    assert opened.payload == payload
    assert bytes(opened.client_key) == bytes(req.ephemeral.public_key)
    reply = {"cluster": token.cluster_hex, "rows": [{"kind": "node"}]}
    assert open_response(seal_response(token, opened, reply), token, req) == reply


def test_envelope_shows_nothing_secret(token):
    req = request(token, payload={"marker": "PLAINTEXT-MARKER"})
    env = req.envelope
    assert set(env) == {"v", "tag", "kind", "ts", "nonce", "epk", "body", "mac"}
    assert env["v"] == VERSION and env["ts"] == int(NOW) and env["tag"] == token.tag
    text = repr(env)
    assert "PLAINTEXT-MARKER" not in text
    for secret in (token.secret.hex(), token.cluster_hex, b64(token.secret), b64(token.cluster_id)):
        assert secret not in text


def test_each_request_has_fresh_nonce_and_key(token):
    a, b = request(token), request(token)
    assert a.envelope["nonce"] != b.envelope["nonce"]
    assert a.envelope["epk"] != b.envelope["epk"]


def test_timestamp_within_skew_is_accepted(token):
    for offset in (-MAX_SKEW, 0, MAX_SKEW):
        assert open_request(request(token).envelope, token, NonceCache(), NOW + offset).kind == "hello"


# -- refusals ----------------------------------------------------------------------

def test_wrong_secret_same_cluster(token, nonces):
    impostor = JoinToken(token.cluster_id, JoinToken.generate().secret)
    with pytest.raises(JoinRefused, match=WRONG_SECRET):
        open_request(request(impostor).envelope, token, nonces, NOW)
    assert nonces.seen == {}


def test_token_of_another_cluster(token, nonces):
    with pytest.raises(JoinRefused, match=OTHER_CLUSTER):
        open_request(request(JoinToken.generate()).envelope, token, nonces, NOW)
    assert nonces.seen == {}


@pytest.mark.parametrize("env", [None, [], "hello", 42, b"{}", {}])
def test_not_an_envelope(token, nonces, env):
    with pytest.raises(JoinRefused, match=MALFORMED):
        open_request(env, token, nonces, NOW)


@pytest.mark.parametrize("field", ["v", "tag", "kind", "ts", "nonce", "epk", "body", "mac"])
def test_missing_field(token, nonces, field):
    env = request(token).envelope
    del env[field]
    with pytest.raises(JoinRefused, match=MALFORMED):
        open_request(env, token, nonces, NOW)


@pytest.mark.parametrize(
    "field, value",
    [
        ("v", "1"), ("v", 1.0), ("v", True), ("v", None),
        ("ts", float(NOW)), ("ts", str(int(NOW))), ("ts", True), ("ts", [int(NOW)]),
        ("tag", 7), ("kind", None), ("nonce", 1), ("epk", b"x"), ("body", {}), ("mac", False),
    ],
)
def test_wrong_field_type(token, nonces, field, value):
    env = request(token).envelope
    env[field] = value
    with pytest.raises(JoinRefused, match=MALFORMED):
        open_request(env, token, nonces, NOW)
    assert nonces.seen == {}


def test_unknown_kind_is_malformed(token, nonces):
    env = remac(token, {**request(token).envelope, "kind": "delete-everything"})
    with pytest.raises(JoinRefused, match=MALFORMED):
        open_request(env, token, nonces, NOW)


@pytest.mark.parametrize("version", [0, 2, VERSION + 100])
def test_unsupported_version(token, nonces, version):
    env = {**request(token).envelope, "v": version}
    with pytest.raises(JoinRefused, match=f"unsupported join protocol version {version} "):
        open_request(env, token, nonces, NOW)


@pytest.mark.parametrize(
    "field, value",
    [
        ("ts", int(NOW) + 1),
        ("kind", "register"),
        ("nonce", b64(b"\0" * 16)),
        ("epk", b64(bytes(PrivateKey.generate().public_key))),
        ("body", "AAAA"),
        ("mac", b64(b"\0" * 32)),
    ],
)
def test_tampered_field_fails_the_mac(token, nonces, field, value):
    env = {**request(token).envelope, field: value}
    with pytest.raises(JoinRefused, match=WRONG_SECRET):
        open_request(env, token, nonces, NOW)
    assert nonces.seen == {}


def test_tampered_body_bit_flip(token, nonces):
    env = request(token).envelope
    body = bytearray(env["body"].encode())
    body[10] = ord("A") if body[10] != ord("A") else ord("B")
    with pytest.raises(JoinRefused, match=WRONG_SECRET):
        open_request({**env, "body": body.decode()}, token, nonces, NOW)


@pytest.mark.parametrize("offset", [MAX_SKEW + 1, 3600, 10**6])
def test_stale_timestamp(token, nonces, offset):
    env = request(token, now=NOW - offset).envelope
    with pytest.raises(JoinRefused, match=SKEW) as e:
        open_request(env, token, nonces, NOW)
    assert "+" in str(e.value)
    assert nonces.seen == {}


@pytest.mark.parametrize("offset", [MAX_SKEW + 1, 3600])
def test_future_timestamp(token, nonces, offset):
    env = request(token, now=NOW + offset).envelope
    with pytest.raises(JoinRefused, match=SKEW) as e:
        open_request(env, token, nonces, NOW)
    assert "-" in str(e.value)
    assert nonces.seen == {}


def test_absurd_timestamp_with_valid_mac_is_refused_cleanly(token, nonces):
    env = remac(token, {**request(token).envelope, "ts": 10**400})
    with pytest.raises(JoinRefused, match=SKEW):
        open_request(env, token, nonces, NOW)


def test_replayed_nonce(token, nonces):
    env = request(token).envelope
    open_request(copy.deepcopy(env), token, nonces, NOW)
    with pytest.raises(JoinRefused, match=f"^{REPLAY}$"):
        open_request(copy.deepcopy(env), token, nonces, NOW + 1)


def test_replay_after_the_window_is_refused_by_timestamp(token, nonces):
    env = request(token).envelope
    open_request(copy.deepcopy(env), token, nonces, NOW)
    with pytest.raises(JoinRefused, match=SKEW):
        open_request(copy.deepcopy(env), token, nonces, NOW + 3 * MAX_SKEW)


def test_refused_request_does_not_record_its_nonce(token, nonces):
    good = request(token)
    open_request(request(token).envelope, token, nonces, NOW)
    before = dict(nonces.seen)
    with pytest.raises(JoinRefused, match=WRONG_SECRET):
        open_request({**good.envelope, "mac": b64(b"\1" * 32)}, token, nonces, NOW)
    assert nonces.seen == before
    # the genuine request carrying that nonce is still accepted afterwards
    assert open_request(good.envelope, token, nonces, NOW).kind == "hello"


@pytest.mark.parametrize(
    "field, value",
    [("epk", "not base64!"), ("epk", b64(b"short")), ("body", "not base64!"), ("body", b64(b"x" * 40))],
)
def test_bad_base64_or_box_with_valid_mac(token, nonces, field, value):
    env = remac(token, {**request(token).envelope, field: value})
    with pytest.raises(JoinRefused, match="malformed join request body"):
        open_request(env, token, nonces, NOW)


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, None])
def test_body_that_is_not_an_object(token, nonces, payload):
    env = seal_request(token, "hello", payload, now=NOW).envelope
    with pytest.raises(JoinRefused, match="malformed join request body"):
        open_request(env, token, nonces, NOW)


# -- the reply ---------------------------------------------------------------------

@pytest.fixture
def exchange(token, nonces):
    req = request(token)
    opened = open_request(req.envelope, token, nonces, NOW)
    return req, opened


def test_reply_made_with_another_secret_is_refused(token, exchange):
    req, opened = exchange
    impostor = JoinToken(token.cluster_id, JoinToken.generate().secret)
    reply = seal_response(impostor, opened, {"rows": []})
    with pytest.raises(JoinRefused, match="failed authentication"):
        open_response(reply, token, req)


@pytest.mark.parametrize("field", ["epk", "body", "mac"])
def test_tampered_reply_is_refused(token, exchange, field):
    req, opened = exchange
    reply = seal_response(token, opened, {"rows": []})
    other = seal_response(token, opened, {"rows": ["x"]})
    with pytest.raises(JoinRefused, match="failed authentication"):
        open_response({**reply, field: other[field]}, token, req)


def test_reply_to_another_request_is_refused(token, nonces, exchange):
    req, _ = exchange
    other = request(token)
    reply = seal_response(token, open_request(other.envelope, token, nonces, NOW), {"rows": []})
    with pytest.raises(JoinRefused, match="failed authentication"):
        open_response(reply, token, req)


@pytest.mark.parametrize(
    "reply", [None, [], {}, {"epk": "a", "body": "b"}, {"epk": 1, "body": "b", "mac": "c"}]
)
def test_malformed_reply(token, exchange, reply):
    req, _ = exchange
    with pytest.raises(JoinRefused, match=r"^malformed join reply$"):
        open_response(reply, token, req)


def test_reply_body_that_is_not_an_object(token, exchange):
    req, opened = exchange
    reply = seal_response(token, opened, ["not", "a", "dict"])
    with pytest.raises(JoinRefused, match="malformed join reply body"):
        open_response(reply, token, req)


# -- the nonce cache ---------------------------------------------------------------

def test_nonce_cache_forgets_old_nonces():
    cache = NonceCache(window=10)
    assert cache.check_and_add("a", 100)
    assert not cache.check_and_add("a", 110)
    assert cache.check_and_add("b", 115)
    assert cache.check_and_add("c", 121)  # prunes "a" (seen at 100 < 121 - 20)
    assert set(cache.seen) == {"b", "c"}


# -- text from the wire that is not ASCII (JSON can carry any of it) -----------------

@pytest.mark.parametrize("value", ["é" * 44, "\ud800", "☃"])
@pytest.mark.parametrize("field", ["mac", "nonce", "epk", "body"])
def test_non_ascii_fields_are_refused_not_crashed(token, nonces, field, value):
    env = {**request(token).envelope, field: value}
    with pytest.raises(JoinRefused, match=WRONG_SECRET):
        open_request(env, token, nonces, NOW)
    assert nonces.seen == {}


@pytest.mark.parametrize("value", ["é" * 44, "\ud800"])
@pytest.mark.parametrize("field", ["mac", "epk", "body"])
def test_non_ascii_reply_fields_are_refused_not_crashed(token, exchange, field, value):
    req, opened = exchange
    reply = {**seal_response(token, opened, {}), field: value}
    with pytest.raises(JoinRefused, match="failed authentication"):
        open_response(reply, token, req)
