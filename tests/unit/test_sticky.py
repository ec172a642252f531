"""Sticky cookies: signed, opaque, shared between instances (docs/configuration.md sticky; docs/architecture.md)."""

from __future__ import annotations

import base64
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer import sticky
from balancer.config import StickyConfig
from balancer.sticky import StickyCookies, read_cookie, secret_from_env

SECRET = b"correct horse battery staple 1234"
NOW = 1_700_000_000.0
CONFIG = StickyConfig(cookie="LB_LIVE", ttl=8 * 3600.0)
BACKEND_ID = "eu-1"
BACKEND_ADDRESS = "10.0.1.5:8000"


def cookies(secret: bytes = SECRET, config: StickyConfig = CONFIG, pool: str = "live-games") -> StickyCookies:
    return StickyCookies(config, pool, secret)


def test_round_trip_names_the_backend_token() -> None:
    jar = cookies()
    value = jar.encode(BACKEND_ID, NOW)
    token = jar.decode(value, NOW + 1)
    assert token == jar.token_for(BACKEND_ID)
    assert jar.index(["eu-1", "eu-2"])[token] == BACKEND_ID


def test_tokens_differ_per_backend_and_per_pool() -> None:
    jar = cookies()
    assert jar.token_for("eu-1") != jar.token_for("eu-2")
    assert cookies(pool="lobby").token_for("eu-1") != jar.token_for("eu-1")


def test_value_is_urlsafe_and_reveals_neither_id_nor_address() -> None:
    jar = cookies()
    value = jar.encode(BACKEND_ID, NOW)
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = base64.urlsafe_b64decode(value + "==")
    for secret_thing in (BACKEND_ID, BACKEND_ADDRESS, "10.0.1.5", "live-games"):
        assert secret_thing not in value
        assert secret_thing.encode() not in raw


@pytest.mark.parametrize("position", range(sticky.VALUE_CHARS))
def test_changing_any_character_is_rejected(position: int) -> None:
    jar = cookies()
    value = jar.encode(BACKEND_ID, NOW)
    for replacement in "AQgw_-+/0z=.":
        if replacement == value[position]:
            continue
        tampered = value[:position] + replacement + value[position + 1:]
        assert jar.decode(tampered, NOW) is None, (position, replacement)


def test_flipping_any_bit_of_the_raw_value_is_rejected() -> None:
    jar = cookies()
    raw = bytearray(base64.urlsafe_b64decode(jar.encode(BACKEND_ID, NOW) + "=="))
    for byte in range(len(raw)):
        for bit in range(8):
            raw[byte] ^= 1 << bit
            tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
            raw[byte] ^= 1 << bit
            assert jar.decode(tampered, NOW) is None, (byte, bit)


def test_later_expiry_cannot_be_forged() -> None:
    jar = cookies()
    raw = bytearray(base64.urlsafe_b64decode(jar.encode(BACKEND_ID, NOW) + "=="))
    raw[9:13] = (int(NOW) + 10 * 365 * 86400).to_bytes(4, "big")
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert jar.decode(forged, NOW) is None


def test_wrong_secret_is_rejected() -> None:
    value = cookies().encode(BACKEND_ID, NOW)
    assert cookies(secret=b"another secret entirely").decode(value, NOW) is None


def test_cookie_of_another_cookie_name_is_rejected() -> None:
    value = cookies().encode(BACKEND_ID, NOW)
    other = cookies(config=StickyConfig(cookie="LB_LOBBY"))
    assert other.decode(value, NOW) is None


def test_expired_is_rejected() -> None:
    jar = cookies()
    value = jar.encode(BACKEND_ID, NOW)
    assert jar.decode(value, NOW + CONFIG.ttl - 1) is not None
    assert jar.decode(value, NOW + CONFIG.ttl) is None
    assert jar.decode(value, NOW + 10 * CONFIG.ttl) is None


@pytest.mark.parametrize(
    "garbage",
    ["", "x", "not base64 at all!!", "A" * 34, "=" * 34, "é" * 34, "€" * 34, "\x00" * 34,
     "A" * 33 + "B", "A" * 35, "A" * 1000, " " * 34],
)
def test_garbage_is_rejected(garbage: str) -> None:
    assert cookies().decode(garbage, NOW) is None


def test_non_string_is_rejected() -> None:
    jar = cookies()
    value = jar.encode(BACKEND_ID, NOW)
    assert jar.decode(None, NOW) is None  # type: ignore[arg-type]
    assert jar.decode(value.encode(), NOW) is None  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_decode_never_raises(value: str) -> None:
    assert cookies().decode(value, NOW) is None


def test_two_instances_with_the_same_secret_agree() -> None:
    first = StickyCookies(CONFIG, "live-games", bytes(SECRET))
    second = StickyCookies(StickyConfig(cookie="LB_LIVE", ttl=8 * 3600.0), "live-games", bytes(SECRET))
    value = first.encode(BACKEND_ID, NOW)
    assert second.decode(value, NOW + 60) == second.token_for(BACKEND_ID)
    assert second.encode(BACKEND_ID, NOW) == value


def test_new_players_within_a_second_share_one_signature_and_the_next_second_gets_its_own() -> None:
    # Issuing is remembered per backend and second; what is remembered must be exactly what a
    # fresh signature gives, expire as one, and differ per backend and per second.
    jar = cookies()
    first = jar.encode(BACKEND_ID, NOW + 0.1)
    assert jar.encode(BACKEND_ID, NOW + 0.9) == first == cookies().encode(BACKEND_ID, NOW)
    assert jar.encode("eu-2", NOW + 0.5) != first
    later = jar.encode(BACKEND_ID, NOW + 1)
    assert later != first and later == cookies().encode(BACKEND_ID, NOW + 1)
    assert jar.decode(first, NOW + CONFIG.ttl - 1) == jar.token_for(BACKEND_ID)
    assert jar.decode(first, NOW + CONFIG.ttl) is None  # the remembered one expires as any
    assert cookies().decode(later, NOW + 2) == jar.token_for(BACKEND_ID)


def test_set_cookie_header_attributes() -> None:
    jar = cookies()
    value = jar.encode(BACKEND_ID, NOW)
    assert jar.set_cookie_header(value, secure=False) == (
        f"LB_LIVE={value}; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax".encode()
    )
    assert jar.set_cookie_header(value, secure=True) == (
        f"LB_LIVE={value}; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax; Secure".encode()
    )


def test_read_cookie_finds_the_named_one_among_several() -> None:
    header = "theme=dark; LB_LIVE_OLD=zzz;LB_LIVE=abc123 ;  session=xyz"
    assert read_cookie(header, "LB_LIVE") == "abc123"
    assert read_cookie(header.encode(), "LB_LIVE") == "abc123"
    assert read_cookie(header, "session") == "xyz"
    assert read_cookie(header, "theme") == "dark"
    assert read_cookie(header, "LB_LIVE_OLD") == "zzz"


def test_read_cookie_of_a_header_read_before_gives_each_name_its_own_value() -> None:
    # A header seen again is answered from memory: per name, and long headers still read.
    header = b"theme=dark; LB_LIVE=abc123; session=xyz"
    for _ in range(2):
        assert read_cookie(header, "LB_LIVE") == "abc123"
        assert read_cookie(header, "session") == "xyz"
        assert read_cookie(header, "missing") is None
    long_header = b"pad=" + b"x" * 600 + b"; LB_LIVE=late"
    assert read_cookie(long_header, "LB_LIVE") == "late"


def test_read_cookie_ignores_the_name_inside_other_names_and_values() -> None:
    assert read_cookie("XLB_LIVE=1; a=LB_LIVE=2", "LB_LIVE") is None
    assert read_cookie("XLB_LIVE=1; a=LB_LIVE=2; LB_LIVE=3", "LB_LIVE") == "3"


def test_read_cookie_edge_cases() -> None:
    assert read_cookie(None, "LB_LIVE") is None
    assert read_cookie(b"", "LB_LIVE") is None
    assert read_cookie("other=1", "LB_LIVE") is None
    assert read_cookie("LB_LIVE=", "LB_LIVE") == ""
    assert read_cookie('LB_LIVE="quoted"', "LB_LIVE") == "quoted"
    assert read_cookie("LB_LIVE=first; LB_LIVE=second", "LB_LIVE") == "first"
    # Two Cookie fields joined by the caller, as RFC 6265 / RFC 9113 ask.
    assert read_cookie("a=1; b=2" + "; " + "LB_LIVE=v", "LB_LIVE") == "v"


def test_read_cookie_then_decode() -> None:
    jar = cookies()
    value = jar.encode(BACKEND_ID, NOW)
    header = f"_ga=GA1.2.3; LB_LIVE={value}; lang=de".encode()
    assert jar.decode(read_cookie(header, "LB_LIVE") or "", NOW) == jar.token_for(BACKEND_ID)


def test_secret_from_env_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STICKY_SECRET_SET", "s3cret")
    assert secret_from_env("TEST_STICKY_SECRET_SET") == b"s3cret"


def test_secret_from_env_unset_warns_once_and_is_stable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("TEST_STICKY_SECRET_UNSET", raising=False)
    monkeypatch.setattr(sticky, "_warned_envs", set())
    with caplog.at_level(logging.WARNING, logger="balancer.sticky"):
        first = secret_from_env("TEST_STICKY_SECRET_UNSET")
        second = secret_from_env("TEST_STICKY_SECRET_UNSET")
    assert first == second and len(first) >= 32
    warnings = [r for r in caplog.records if r.name == "balancer.sticky" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "instance" in warnings[0].getMessage()


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        StickyCookies(CONFIG, "live-games", b"")
