"""The join handshake, as pure functions over JSON envelopes (no sockets here).

A joining node sends an envelope to any member over the underlay, before any tunnel
exists:

    {v, tag, kind, ts, nonce, epk, body, mac}

- `tag` is the public hash of the cluster id (a token of another cluster is told so);
- `body` is the payload sealed with a key derived from the token secret (secrecy);
- `mac` is a keyed BLAKE2b over every other field, keyed from the token secret
  (admission: without the secret no member accepts anything);
- `ts` and `nonce` stop replays: a member refuses an old timestamp or a nonce it saw;
- `epk` is the joiner's ephemeral X25519 key; the reply is boxed to it with the
  member's own ephemeral key, so the cluster state sent back has forward secrecy.

The member's reply carries a MAC bound to the request's MAC, so nobody without the
secret can answer in a member's place.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from dataclasses import dataclass, field

from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox

from meshnet.errors import JoinRefused
from meshnet.keys import b64, unb64
from meshnet.token import JoinToken

VERSION = 1
MAX_SKEW = 120.0  # seconds a request may be old (or early, for clock skew)
KINDS = ("hello", "register")
MAX_ENVELOPE = 1 << 20  # bytes; larger requests are refused before parsing


def _mac(key: bytes, *parts: str) -> str:
    data = "\n".join(parts).encode("utf-8", "surrogatepass")  # any JSON string, even a lone surrogate
    return b64(blake2b(data, key=key, digest_size=32, encoder=RawEncoder))


def _same_mac(expected: str, given: str) -> bool:
    """Constant-time compare of any text from the wire (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def _request_mac(token: JoinToken, env: dict) -> str:
    return _mac(
        token.mac_key(), str(env["v"]), env["tag"], env["kind"], str(env["ts"]),
        env["nonce"], env["epk"], env["body"],
    )


@dataclass
class NonceCache:
    """Nonces seen within the replay window; older ones are forgotten with their timestamps."""

    window: float = MAX_SKEW
    seen: dict[str, float] = field(default_factory=dict)

    def check_and_add(self, nonce: str, now: float) -> bool:
        """True if the nonce is fresh (and remembers it), False for a replay."""
        for old in [n for n, t in self.seen.items() if t < now - 2 * self.window]:
            del self.seen[old]
        if nonce in self.seen:
            return False
        self.seen[nonce] = now
        return True


@dataclass(frozen=True)
class Request:
    """A sealed request plus the ephemeral key needed to open the reply."""

    envelope: dict
    ephemeral: PrivateKey


def seal_request(token: JoinToken, kind: str, payload: dict, now: float | None = None) -> Request:
    ephemeral = PrivateKey.generate()
    box = SecretBox(token.box_key())
    env = {
        "v": VERSION,
        "tag": token.tag,
        "kind": kind,
        "ts": int(now if now is not None else time.time()),
        "nonce": b64(os.urandom(16)),
        "epk": b64(bytes(ephemeral.public_key)),
        "body": b64(bytes(box.encrypt(json.dumps(payload).encode()))),
    }
    env["mac"] = _request_mac(token, env)
    return Request(env, ephemeral)


@dataclass(frozen=True)
class Opened:
    kind: str
    payload: dict
    client_key: PublicKey
    mac: str


def open_request(env: object, token: JoinToken, nonces: NonceCache, now: float) -> Opened:
    """Check a request in the order that leaks least and stores nothing for bad input.

    The MAC is checked before the timestamp and nonce, so garbage never fills the
    nonce cache; every refusal raises JoinRefused with a one-line reason.
    """
    fields = {"v": int, "tag": str, "kind": str, "ts": int, "nonce": str, "epk": str,
              "body": str, "mac": str}
    if not isinstance(env, dict) or any(
        not isinstance(env.get(k), t) or isinstance(env.get(k), bool) for k, t in fields.items()
    ):
        raise JoinRefused("malformed join request")
    if env["v"] != VERSION:
        raise JoinRefused(f"unsupported join protocol version {env['v']} (this node speaks {VERSION})")
    if env["tag"] != token.tag:
        raise JoinRefused("the token is for another cluster")
    if env["kind"] not in KINDS:
        raise JoinRefused("malformed join request")
    if not _same_mac(_request_mac(token, env), env["mac"]):
        raise JoinRefused("wrong token: the secret does not match this cluster's")
    ts = max(-(2**53), min(env["ts"], 2**53))  # a huge int would overflow the float arithmetic
    if abs(now - ts) > MAX_SKEW:
        raise JoinRefused(
            f"join request timestamp is {now - ts:+.0f} s off (limit ±{MAX_SKEW:.0f} s): "
            "replayed request or clock skew"
        )
    if not nonces.check_and_add(env["nonce"], now):
        raise JoinRefused("replayed join request")
    try:
        client_key = PublicKey(unb64(env["epk"], 32))
        plain = SecretBox(token.box_key()).decrypt(unb64(env["body"]))
        payload = json.loads(plain)
    except (ValueError, CryptoError):
        raise JoinRefused("malformed join request body") from None
    if not isinstance(payload, dict):
        raise JoinRefused("malformed join request body")
    return Opened(env["kind"], payload, client_key, env["mac"])


def seal_response(token: JoinToken, opened: Opened, payload: dict) -> dict:
    ephemeral = PrivateKey.generate()
    body = Box(ephemeral, opened.client_key).encrypt(json.dumps(payload).encode())
    env = {"epk": b64(bytes(ephemeral.public_key)), "body": b64(bytes(body))}
    env["mac"] = _mac(token.mac_key(), opened.mac, env["epk"], env["body"])
    return env


def open_response(env: object, token: JoinToken, request: Request) -> dict:
    """Open a member's reply; anything not made by a holder of the secret is refused."""
    if not isinstance(env, dict) or not all(isinstance(env.get(k), str) for k in ("epk", "body", "mac")):
        raise JoinRefused("malformed join reply")
    expected = _mac(token.mac_key(), request.envelope["mac"], env["epk"], env["body"])
    if not _same_mac(expected, env["mac"]):
        raise JoinRefused("join reply failed authentication (not a member of this cluster?)")
    try:
        box = Box(request.ephemeral, PublicKey(unb64(env["epk"], 32)))
        payload = json.loads(box.decrypt(unb64(env["body"])))
    except (ValueError, CryptoError):
        raise JoinRefused("malformed join reply body") from None
    if not isinstance(payload, dict):
        raise JoinRefused("malformed join reply body")
    return payload

