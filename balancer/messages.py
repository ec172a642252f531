"""The messages between the control process and its workers (`workers: N`, balancer/workers.py).

One frozen dataclass per message; `encode` and `decode` are the only places that know the wire
format (JSON lines over a socketpair, each message an object with its `op` and, for a question,
an `id` its reply carries back).

    control -> worker: Health, Discovered, Drain, Split, Reload (-> Reloaded), Snapshot (-> Counters)
    worker -> control: Done, Reloaded, Counters, Refused, each with the question's id
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Union

from .config import Address, BackendConfig

# pool -> backend id -> (healthy, slow-start ramp start on the monotonic clock)
HealthStates = dict[str, dict[str, tuple[bool, float]]]


@dataclass(frozen=True, slots=True)
class Health:
    """The active checks' verdicts, pushed whenever one changed."""

    pools: HealthStates


@dataclass(frozen=True, slots=True)
class Discovered:
    """A pool's backends as Consul now lists them."""

    pool: str
    backends: tuple[BackendConfig, ...]


@dataclass(frozen=True, slots=True)
class Drain:
    """Drain a backend (`drain`), or take it back (`not drain`)."""

    pool: str
    backend: str
    drain: bool


@dataclass(frozen=True, slots=True)
class Split:
    """A route's canary weights set at run time through the admin API."""

    route: str
    weights: dict[str, int]


@dataclass(frozen=True, slots=True)
class Reload:
    """Read the config file again (the control process validated it first)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Send your counters, for /metrics and the status page."""


@dataclass(frozen=True, slots=True)
class Done:
    """The question was carried out."""


@dataclass(frozen=True, slots=True)
class Reloaded:
    errors: tuple[str, ...]  # none: the worker runs the new config


@dataclass(frozen=True, slots=True)
class Counters:
    stats: dict[str, Any]  # metrics.Stats.snapshot()
    pools: dict[str, Any]  # pool -> its counters and per-backend ones (workers.pool_counters)


@dataclass(frozen=True, slots=True)
class Refused:
    """A message this worker does not know (a control process of another version)."""

    reason: str


Message = Union[Health, Discovered, Drain, Split, Reload, Snapshot, Done, Reloaded, Counters, Refused]

_OPS: dict[str, type] = {
    "health": Health, "discovered": Discovered, "drain": Drain, "split": Split, "reload": Reload,
    "snapshot": Snapshot, "done": Done, "reloaded": Reloaded, "counters": Counters,
    "refused": Refused,
}
_OP_OF = {cls: op for op, cls in _OPS.items()}


def encode(message: Message, message_id: int | None = None) -> bytes:
    """One JSON line; `message_id` pairs a question with its reply."""
    wire: dict[str, Any] = {"op": _OP_OF[type(message)]}
    if message_id is not None:
        wire["id"] = message_id
    for field in fields(message):
        value = getattr(message, field.name)
        if field.name == "backends":
            value = [_backend_to_wire(b) for b in value]
        wire[field.name] = value
    return json.dumps(wire, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> tuple[int | None, Message]:
    """The message on one line and its id (None: no reply wanted). An unknown op decodes as
    `Refused`, so that the receiver answers instead of failing."""
    wire = json.loads(line)
    message_id = wire.pop("id", None)
    op = wire.pop("op", None)
    cls = _OPS.get(op)
    if cls is None:
        return message_id, Refused(f"unknown op {op}")
    if cls is Health:
        wire["pools"] = {pool: {b: (bool(h), float(r)) for b, (h, r) in states.items()}
                         for pool, states in wire["pools"].items()}
    elif cls is Discovered:
        wire["backends"] = tuple(_backend_from_wire(b) for b in wire["backends"])
    elif cls is Reloaded:
        wire["errors"] = tuple(wire["errors"])
    return message_id, cls(**wire)


def _backend_to_wire(b: BackendConfig) -> dict[str, Any]:
    return {"id": b.id, "host": b.address.host, "port": b.address.port, "region": b.region,
            "weight": b.weight, "source": b.source}


def _backend_from_wire(d: dict[str, Any]) -> BackendConfig:
    return BackendConfig(id=d["id"], address=Address(d["host"], d["port"]), region=d["region"],
                         weight=d["weight"], source=d["source"])
