"""The Downstream contract: both player sides implement every method the base leaves to them.

The base's own methods (count_rejected, send_answer) are shared; the others are only declared
there, and a player's side that forgot one would answer nothing. This check fails when a new
method is added to the contract and one implementation lacks it.
"""

from __future__ import annotations

import pytest

from balancer.http.client_side import ClientConnection
from balancer.http.downstream import OWN_METHODS, Downstream
from balancer.http.http2 import Http2Stream


@pytest.mark.parametrize("implementation", [ClientConnection, Http2Stream])
def test_every_player_side_implements_the_whole_contract(implementation):
    missing = [name for name in OWN_METHODS
               if getattr(implementation, name) is getattr(Downstream, name)]
    assert missing == []


def test_the_contract_lists_every_method_of_the_base():
    public = {name for name in dir(Downstream)
              if not name.startswith("_") and callable(getattr(Downstream, name))}
    assert public == set(OWN_METHODS) | {"send_answer", "count_rejected"}
