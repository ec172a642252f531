"""Request ids the balancer makes (docs/architecture.md, "Forwarding": a UUID4 when the client sent none usable)."""

from __future__ import annotations

import os
import uuid

from balancer.http.headers import new_request_id, request_id_from


def test_every_id_is_a_canonical_uuid4() -> None:
    # Several batches' worth, so the refill is crossed more than once.
    ids = [new_request_id() for _ in range(1000)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower-case, 8-4-4-4-12
    assert len(set(ids)) == len(ids)


def test_variant_digits_are_all_used() -> None:
    # The variant digit carries two random bits: a stuck one would mean less randomness.
    digits = {new_request_id()[19] for _ in range(2000)}
    assert digits == set("89ab")


def test_a_well_formed_client_id_is_kept_and_a_bad_one_replaced() -> None:
    assert request_id_from(b"abc-123_X.y") == "abc-123_X.y"
    assert uuid.UUID(request_id_from(b"has space")).version == 4
    assert uuid.UUID(request_id_from(b"x" * 129)).version == 4
    assert uuid.UUID(request_id_from(None)).version == 4


def test_a_forked_worker_draws_ids_of_its_own() -> None:
    new_request_id()  # the parent holds a partly used batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the ids it would hand out next
        try:
            os.write(write, " ".join(new_request_id() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent = [new_request_id() for _ in range(5)]
    assert len(child) == 5
    assert not set(child) & set(parent)


def test_every_random_digit_place_varies() -> None:
    # Ids are formatted a digit place at a time for a batch: a place filled from the wrong
    # digits (or not at all) would repeat across ids.
    ids = [new_request_id() for _ in range(2000)]
    for place in range(36):
        seen = {text[place] for text in ids}
        if place in (8, 13, 18, 23):
            assert seen == {"-"}
        elif place == 14:
            assert seen == {"4"}
        elif place == 19:
            assert seen == set("89ab")
        else:
            assert len(seen) == 16, place


def test_ids_are_the_random_bytes_in_uuid4_form(monkeypatch) -> None:
    """Each id is 16 bytes of os.urandom with the version and variant bits set, as Python's own
    uuid module forms them (the compiled build does it in C, the pure one by strided slices)."""
    from balancer.http import headers
    from balancer.http.uuid_text import uuid4_texts

    random = bytes((i * 37 + 11) % 256 for i in range(16 * 128))
    monkeypatch.setattr(os, "urandom", lambda n: random[:n])
    headers._forget_random_ids()
    ids = [new_request_id() for _ in range(128)]
    headers._forget_random_ids()  # the next test draws real random bytes again
    expected = [str(uuid.UUID(bytes=random[i:i + 16], version=4)) for i in range(0, len(random), 16)]
    assert sorted(ids) == sorted(expected)
    assert uuid4_texts(random) == "".join(expected)
