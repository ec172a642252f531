"""Signed, opaque sticky cookies (docs/configuration.md `sticky`; docs/architecture.md,
"Choosing a backend" step 2 and "More than one machine").

A sticky cookie names the backend a player is pinned to, so that every balancer instance sends
the player back to the same game server. It must not reveal which server that is (ids and
addresses are internal topology), and it must not be forgeable (a player must not choose a
server, nor flood one by copying a cookie to many clients for longer than its lifetime).

Cookie value, before urlsafe base64 without padding (25 bytes -> 34 characters):

    token (9 bytes) | expiry (uint32 big-endian unix seconds) | MAC (12 bytes)

- token = HMAC-SHA256(secret, pool_name "\\0" backend_id)[:9]: deterministic, so every instance
  with the same secret computes the same token for the same backend and understands cookies
  issued by the others; without the secret it cannot be mapped back to an id.
- MAC = HMAC-SHA256(mac_key, cookie_name "\\0" token expiry)[:12], where mac_key is derived from
  the secret so that a token can never double as a MAC (domain separation). Binding the cookie
  name means a cookie of one pool is not accepted under another pool's name.

The caller keeps a dict token -> backend id, rebuilt when the pool's membership changes
(`StickyCookies.index`), and looks the decoded token up in it. Nothing here does I/O; `encode`
and `decode` cost one HMAC each.
"""

from __future__ import annotations

import binascii
import hmac
import logging
import os
import secrets
from collections.abc import Iterable

from .compiled import fields
from .config import StickyConfig

log = logging.getLogger("balancer.sticky")

TOKEN_BYTES = 9
EXPIRY_BYTES = 4
MAC_BYTES = 12
_SIGNED_BYTES = TOKEN_BYTES + EXPIRY_BYTES
_RAW_BYTES = _SIGNED_BYTES + MAC_BYTES
# 25 bytes = 8 full base64 quanta (32 chars) + 1 byte (2 chars, then "==" padding).
VALUE_CHARS = 34
_PADDING = "=="
# The last character carries 2 data bits and 4 zero bits. Decoders ignore those 4 bits, so
# without this check 4 different strings would decode to the same cookie; we accept only the
# canonical one, so any change to the value is a rejection.
_CANONICAL_LAST = frozenset("AQgw")
# urlsafe -> standard alphabet for binascii; "+" and "/" are not urlsafe, so they are mapped to
# "*", which strict decoding rejects (otherwise "-" and "+" would both decode to 62).
_TO_STANDARD = str.maketrans({"-": "+", "_": "/", "+": "*", "/": "*"})
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")

_TOKEN_CACHE_MAX = 4096  # backend ids churn with Consul; bound the cache instead of leaking
# Verified cookie values: a returning player sends the same value on every request, and the
# base64 + HMAC of a full check is most of sticky's cost per request. Only values whose MAC
# verified are kept, so a forger cannot fill it; cleared when full.
_VERIFIED_CACHE_MAX = 65536
_MAC_KEY_LABEL = b"balancer.sticky.mac\0"

_process_secret: bytes | None = None
_warned_envs: set[str] = set()


def secret_from_env(env_name: str) -> bytes:
    """The sticky secret from the environment variable `env_name`.

    When it is unset (or empty) a random secret is used instead, one per process and shared by
    every pool of the process, and one warning is logged per variable: cookies then survive
    neither a restart nor a trip to another instance. Call this before forking workers so
    that all workers of one instance inherit the same random secret.
    """
    value = os.environ.get(env_name)
    if value:
        return value.encode("utf-8")
    global _process_secret
    if _process_secret is None:
        _process_secret = secrets.token_bytes(32)
    if env_name not in _warned_envs:
        _warned_envs.add(env_name)
        log.warning(
            "%s is not set: sticky cookies are signed with a random per-process secret; "
            "set the same secret on every balancer instance so that any instance honours "
            "the cookies of the others, and so that they survive a restart",
            env_name,
        )
    return _process_secret


class StickyCookies:
    """Encodes and verifies the sticky cookie of one pool."""

    __slots__ = fields(__name__, "StickyCookies")  # its .pxd declares them

    def __init__(self, config: StickyConfig, pool_name: str, secret: bytes) -> None:
        if not secret:
            raise ValueError("sticky secret must not be empty")
        self.name = config.cookie
        self.fail_closed = config.on_failure == "fail"  # 503 rather than a new backend
        # Whole seconds: Max-Age is an integer and the expiry field counts seconds.
        self.ttl = int(config.ttl)
        self._secret = secret
        self._pool_prefix = pool_name.encode("utf-8") + b"\0"
        self._mac_key = hmac.digest(secret, _MAC_KEY_LABEL, "sha256")
        self._mac_prefix = self.name.encode("latin-1") + b"\0"
        self._tokens: dict[str, bytes] = {}
        self._verified: dict[str, tuple[bytes, int]] = {}  # value -> (token, expiry)
        # New players: the value is the same for every player sent to one backend within one
        # second (the expiry counts whole seconds), so it is signed once per backend and
        # second, not once per player: issuing costs what checking a known cookie does.
        self._issued: dict[str, tuple[int, str]] = {}  # backend id -> (expiry, value)
        self._headers: dict[tuple[str, bool], bytes] = {}  # (value, secure) -> Set-Cookie value
        self._header_prefix = self.name.encode("latin-1") + b"="
        self._header_suffix = f"; Path=/; Max-Age={self.ttl}; HttpOnly; SameSite=Lax".encode("ascii")
        self._header_suffix_secure = self._header_suffix + b"; Secure"

    def token_for(self, backend_id: str) -> bytes:
        """The opaque token of a backend; the same on every instance with the same secret."""
        token = self._tokens.get(backend_id)
        if token is None:
            if len(self._tokens) >= _TOKEN_CACHE_MAX:
                self._tokens.clear()
            token = hmac.digest(self._secret, self._pool_prefix + backend_id.encode("utf-8"), "sha256")[:TOKEN_BYTES]
            self._tokens[backend_id] = token
        return token

    def index(self, backend_ids: Iterable[str]) -> dict[bytes, str]:
        """token -> backend id for the pool's current members; rebuild on membership change."""
        return {self.token_for(backend_id): backend_id for backend_id in backend_ids}

    def _mac(self, signed: bytes) -> bytes:
        return hmac.digest(self._mac_key, self._mac_prefix + signed, "sha256")[:MAC_BYTES]

    def encode(self, backend_id: str, now: float) -> str:
        """A fresh cookie value for `backend_id`, valid for `ttl` seconds from `now` (unix time)."""
        expiry = int(now + self.ttl)
        issued = self._issued.get(backend_id)
        if issued is not None and issued[0] == expiry:
            return issued[1]
        token = self.token_for(backend_id)
        value = self.encode_token(token, now)
        if len(self._issued) >= _TOKEN_CACHE_MAX:
            self._issued.clear()
        self._issued[backend_id] = (expiry, value)
        verified = self._verified
        if len(verified) >= _VERIFIED_CACHE_MAX:
            verified.clear()
        verified[value] = (token, expiry)  # the player's next request finds it checked
        return value

    def encode_token(self, token: bytes, now: float) -> str:
        """A fresh cookie value carrying any 9-byte `token` (a canary split keeps a player's
        bucket in it), signed the same way."""
        signed = token + int(now + self.ttl).to_bytes(EXPIRY_BYTES, "big")
        raw = signed + self._mac(signed)
        return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE)[:VALUE_CHARS].decode("ascii")

    def decode(self, value: str, now: float) -> bytes | None:
        """The backend token of a valid, unexpired cookie; None for anything else. Never raises:
        a forged or damaged cookie is treated as absent (docs/architecture.md)."""
        if type(value) is str:  # a returning player: one dict lookup, no second call
            known = self._verified.get(value)
            if known is not None:
                return known[0] if known[1] > now else None
        known = self.verified(value, now)
        return known[0] if known is not None else None

    def verified(self, value: str, now: float) -> tuple[bytes, int] | None:
        """(token, expiry in unix seconds) of a valid, unexpired cookie; None for anything else."""
        if type(value) is not str:
            return None
        known = self._verified.get(value)
        if known is not None:
            return known if known[1] > now else None
        if len(value) != VALUE_CHARS or value[-1] not in _CANONICAL_LAST:
            return None
        try:
            raw = binascii.a2b_base64(value.translate(_TO_STANDARD) + _PADDING, strict_mode=True)
        except ValueError:  # binascii.Error is a ValueError; so is non-ASCII text
            return None
        if len(raw) != _RAW_BYTES:
            return None
        # Expiry first: an expired cookie needs no HMAC. It is authenticated just below.
        expiry = int.from_bytes(raw[TOKEN_BYTES:_SIGNED_BYTES], "big")
        if expiry <= now:
            return None
        signed = raw[:_SIGNED_BYTES]
        if not hmac.compare_digest(self._mac(signed), raw[_SIGNED_BYTES:]):
            return None
        known = (raw[:TOKEN_BYTES], expiry)
        verified = self._verified
        if len(verified) >= _VERIFIED_CACHE_MAX:
            verified.clear()
        verified[value] = known
        return known

    def set_cookie_header(self, value: str, secure: bool) -> bytes:
        """The Set-Cookie header value; `secure` on TLS listeners (docs/configuration.md)."""
        key = (value, secure)
        header = self._headers.get(key)
        if header is None:
            if len(self._headers) >= _TOKEN_CACHE_MAX:
                self._headers.clear()  # a new value per backend and second: old ones are done
            suffix = self._header_suffix_secure if secure else self._header_suffix
            header = self._headers[key] = self._header_prefix + value.encode("ascii") + suffix
        return header


def read_cookie(cookie_header: bytes | str | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie request header, or None.

    Scans with str.find instead of parsing every pair (SimpleCookie costs tens of microseconds
    and rejects whole headers over one odd pair). A client that sent several Cookie fields
    should have them joined with "; " by the caller (RFC 6265 §5.4, RFC 9113 §8.2.3). When the
    name occurs more than once the first wins, as browsers send the most specific path first.
    """
    if not cookie_header:
        return None
    if type(cookie_header) is bytes and len(cookie_header) <= _READ_CACHE_HEADER_MAX:
        # A player sends the same Cookie header on every request: its answer is remembered.
        key = (cookie_header, name)
        value = _read_cache.get(key, _NOT_READ)
        if value is _NOT_READ:
            value = _read_cookie(cookie_header.decode("latin-1"), name)
            if len(_read_cache) >= _READ_CACHE_MAX:
                _read_cache.clear()
            _read_cache[key] = value
        return value  # type: ignore[return-value]
    header = cookie_header.decode("latin-1") if isinstance(cookie_header, bytes) else cookie_header
    return _read_cookie(header, name)


# read_cookie's answers for short headers (a few thousand players' headers, bounded in size).
_READ_CACHE_HEADER_MAX = 512
_READ_CACHE_MAX = 4096
_read_cache: dict[tuple[bytes, str], str | None] = {}
_NOT_READ = object()


def _read_cookie(header: str, name: str) -> str | None:
    target = name + "="
    start = 0
    while True:
        at = header.find(target, start)
        if at < 0:
            return None
        if _starts_pair(header, at):
            begin = at + len(target)
            end = header.find(";", begin)
            value = (header[begin:] if end < 0 else header[begin:end]).strip(" \t")
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]  # RFC 6265 allows a DQUOTEd cookie-value
            return value
        start = at + 1


def _starts_pair(header: str, at: int) -> bool:
    """Is `at` the start of a name=value pair (not the middle of another name or value)?"""
    before = at - 1
    while before >= 0 and header[before] in " \t":
        before -= 1
    return before < 0 or header[before] == ";"
