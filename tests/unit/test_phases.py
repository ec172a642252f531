"""The life of an exchange as phases (balancer/phases.py): the table, and an exchange that
keeps to it and fails loudly when asked to leave it. No sockets: the player's side is a
Downstream that keeps what it is handed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from balancer.config_file import parse_config
from balancer.http.downstream import Downstream
from balancer.http.exchange import Exchange
from balancer.http.parser import RequestHead
from balancer.metrics import Stats
from balancer.phases import (
    DONE, FORWARDING, NAMES, RESPONDING, ROUTING, TRANSITIONS, TUNNEL, IllegalTransition, allowed,
)
from balancer.pool import Pool
from balancer.runtime import Runtime

PHASES = (ROUTING, FORWARDING, RESPONDING, TUNNEL, DONE)


def test_the_move_table_is_the_transitions() -> None:
    for old in PHASES:
        for new in PHASES:
            assert allowed(old, new) == (new in TRANSITIONS[old]), (NAMES[old], NAMES[new])


def test_done_is_final_and_an_answer_never_starts_twice() -> None:
    assert TRANSITIONS[DONE] == ()
    assert not any(allowed(old, RESPONDING) for old in (RESPONDING, TUNNEL, DONE))
    assert not any(allowed(TUNNEL, new) for new in (ROUTING, FORWARDING, RESPONDING))


class Player(Downstream):
    """The player's side, in memory: keeps the answers it is handed."""

    def __init__(self) -> None:
        self.loop = None
        self.client_ip = "192.0.2.1"
        self.peer_trusted = False
        self.scheme = b"http"
        self.client_cert = None
        self.write_paused = False
        self.facts = None
        self.answers: list[tuple[int, bytes]] = []
        self.ended: list[Exchange] = []

    def send_answer(self, status: int, fields: list, body: bytes, close: bool, head_only: bool) -> int:
        self.answers.append((status, body))
        return len(body)

    def exchange_finished(self, exchange: Any) -> None:
        self.ended.append(exchange)

    def count_rejected(self, reason: str) -> None:
        pass


def exchange() -> tuple[Exchange, Player]:
    config = parse_config({
        "listeners": [{"name": "public", "address": "127.0.0.1:0"}],
        "routes": [{"name": "games", "match": {"host": "games.example"}, "pool": "games"}],
        "pools": {"games": {"backends": [{"id": "b1", "address": "127.0.0.1:9001"}]}},
    }, "test.yaml")
    runtime = Runtime(config, {name: Pool(c) for name, c in config.pools.items()}, Stats())
    head = RequestHead()
    head.method, head.target, head.path, head.host = b"GET", b"/", b"/", "other.example"
    player = Player()
    return Exchange(player, head, runtime), player


def test_an_answer_moves_routing_to_done_and_nothing_after_it_answers_again() -> None:
    ex, player = exchange()
    assert ex.phase == ROUTING and not ex.response_started and not ex.finished
    ex.begin()  # no route for this host: the balancer's own 404
    assert ex.phase == DONE and ex.finished and ex.status == 404
    assert [status for status, _ in player.answers] == [404] and player.ended == [ex]
    ex.reply(502, "backend failed")  # a late failure is ignored, not a second answer
    ex.client_lost()
    assert len(player.answers) == 1 and ex.status == 404


def test_a_player_leaving_before_any_answer_is_499() -> None:
    ex, player = exchange()
    ex.client_lost()
    assert (ex.phase, ex.status, player.answers) == (DONE, 499, [])


@pytest.mark.parametrize("start, bad", [(DONE, RESPONDING), (DONE, FORWARDING), (RESPONDING, FORWARDING),
                                        (TUNNEL, RESPONDING), (ROUTING, TUNNEL)])
def test_an_illegal_move_fails_loudly(start: int, bad: int) -> None:
    ex, _ = exchange()
    ex.phase = start
    with pytest.raises(IllegalTransition, match=f"from {NAMES[start]} to {NAMES[bad]}"):
        ex._move(bad)
    assert ex.phase == start
