"""Where models should be loaded: a pure function of the cluster's state.

Every worker runs ``plan`` on the same view (the adverts, each model's queue, the replica
policies, the load tickets) and acts only on the loads it is named for; the load tickets
in Redis (``worker.placement.tickets``) make sure that workers whose views differ for a
moment never start more loads of a model than a plan asked for (never two of a cold one).
The simulation in ``bench.placement`` runs this same function against a thousand
simulated workers.

The rules, per model, most urgent first (the oldest waiting job):

- below its policy's ``min_replicas``: load as many as are missing, even with nothing
  queued;
- jobs waiting and no replica (cold): load one, evicting idle models if need be: a
  replica of a model that has another, or one idle for longer than the cold model's
  oldest job has waited (the one keep_alive would unload first goes first, as in Ollama);
  any idle one once that job waited ``starve_s``. Models that share too little memory so
  take turns, each serving its queue, instead of thrashing between jobs;
- jobs waiting longer than ``scale_out_wait_s``: as many more replicas as the waiting jobs
  would fill (at the slots a replica has), up to ``max_replicas``, into free memory first,
  else evicting idle replicas of models that have another, or a model's last one only if
  it has been idle for ``starve_s`` (a served model does not make another one cold for a
  job that arrived a moment ago);
- the tickets a model holds (loads under way, or done within the cooldown) count as loads
  made: the next step comes only after the cooldown, seeing what those replicas took.

A worker is chosen among those that have the model's file and are loading nothing: first
those where it fits in free memory, then those where it fits once idle models go (fewest
evicted); among them the fewest busy slots, then the tightest fit (small models leave the
big devices to the big models), then a hash of (model, worker), so that equal workers
share the models out instead of all picking the first. One load per worker per plan.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

from shared.messages import ReplicaPolicy

Reason = Literal["min_replicas", "cold", "scale_out"]


@dataclass(frozen=True)
class Replica:
    """A model loaded on a worker."""

    busy: int
    memory: int
    #: Seconds since its last job ended (0 while busy).
    idle_s: float = 0.0
    #: Seconds until its keep_alive unloads it (inf: kept forever).
    expires_in_s: float = math.inf
    #: Jobs it runs at once.
    slots: int = 1
    #: Kept for its model's ``min_replicas`` (never evicted).
    kept: bool = False


@dataclass
class Node:
    """A worker as placement sees it."""

    id: str
    memory_total: int
    memory_free: int
    #: Models this worker has the file of -> memory a load takes here.
    servable: Mapping[str, int]
    replicas: dict[str, Replica] = field(default_factory=dict)
    #: Models being loaded here now.
    loading: set[str] = field(default_factory=set)
    #: Most models it keeps loaded at once (0: no limit but memory).
    max_loaded: int = 0

    @property
    def busy(self) -> int:
        return sum(r.busy for r in self.replicas.values())

    def has_room(self, need: int, evicted: Collection[str] = ()) -> bool:
        """Whether a model taking ``need`` fits once the ``evicted`` replicas are gone."""
        count = len(self.replicas) + len(self.loading) - len(evicted)
        if self.max_loaded and count >= self.max_loaded:
            return False
        freed = sum(self.replicas[name].memory for name in evicted)
        return need <= self.memory_free + freed


@dataclass(frozen=True)
class Demand:
    """A model's queue: jobs not yet taken, and how long the oldest of them has waited."""

    waiting: int = 0
    oldest_wait_s: float = 0.0


@dataclass(frozen=True)
class Load:
    model: str
    worker: str
    reason: Reason
    #: Idle models to unload on that worker first, to make room (in this order).
    evict: tuple[str, ...] = ()

    @property
    def evicting(self) -> bool:
        return bool(self.evict)


@dataclass(frozen=True)
class Params:
    scale_out_wait_s: float = 3.0
    #: A cold model that waited this long may evict any idle replica.
    starve_s: float = 10.0


@dataclass
class Plan:
    loads: list[Load] = field(default_factory=list)
    #: Per worker, the models it keeps for their ``min_replicas`` (never evicted).
    kept: dict[str, set[str]] = field(default_factory=dict)
    #: Models with demand that fit on none of the workers that have them, even empty.
    unplaceable: list[str] = field(default_factory=list)

    def for_worker(self, worker: str) -> list[Load]:
        return [load for load in self.loads if load.worker == worker]

    def for_model(self, model: str) -> list[Load]:
        return [load for load in self.loads if load.model == model]


def plan(
    nodes: Collection[Node],
    demand: Mapping[str, Demand],
    policies: Mapping[str, ReplicaPolicy],
    held: Mapping[str, int],
    params: Params,
) -> Plan:
    """Loads to start now (at most one per worker), the replicas to keep, and the models
    that fit nowhere. ``held``: per model, its load tickets taken (loads under way or
    cooling down). The nodes are not changed."""
    result = Plan()
    holders: dict[str, list[Node]] = {}
    for node in nodes:
        for model in [*node.replicas, *node.loading]:
            holders.setdefault(model, []).append(node)
    kept: set[tuple[str, str]] = set()
    for model, policy in policies.items():
        for node in sorted(holders.get(model, []), key=lambda n: n.id)[: policy.min_replicas]:
            result.kept.setdefault(node.id, set()).add(model)
            kept.add((node.id, model))

    wanted = {m for m, d in demand.items() if d.waiting > 0}
    wanted |= {m for m, p in policies.items() if p.min_replicas > 0}
    urgency = sorted(wanted, key=lambda m: (-demand.get(m, Demand()).oldest_wait_s, m))
    taken: set[str] = {node.id for node in nodes if node.loading}  # one load per worker
    for model in urgency:
        queue = demand.get(model, Demand())
        reason, count = _wanted(model, holders.get(model, []), queue, policies.get(model), params)
        count -= held.get(model, 0)  # loads under way, or just done, count as made
        if reason is None or count <= 0:
            continue
        wait = queue.oldest_wait_s
        if reason == "scale_out":  # a served model: another's last copy goes only if idle
            min_idle = max(wait, params.starve_s)  # long, not merely between two jobs
        else:
            min_idle = wait if wait < params.starve_s else 0.0
        others = _Others(holders, kept, min_idle)
        for _ in range(count):
            chosen = _choose(model, nodes, taken, others)
            if chosen is None:
                break
            node, evict = chosen
            result.loads.append(Load(model, node.id, reason, evict))
            taken.add(node.id)
        fits_somewhere = any(n.servable.get(model, math.inf) <= n.memory_total for n in nodes)
        if reason == "cold" and not result.for_model(model) and not fits_somewhere:
            result.unplaceable.append(model)
    return result


def _wanted(
    model: str, holders: list[Node], queue: Demand, policy: ReplicaPolicy | None, params: Params
) -> tuple[Reason | None, int]:
    """Why ``model`` needs loads now, and how many (before the tickets held)."""
    policy = policy or ReplicaPolicy()
    replicas = len(holders)
    room = math.inf if policy.max_replicas is None else policy.max_replicas - replicas
    if room <= 0:
        return None, 0
    if replicas < policy.min_replicas:
        return "min_replicas", int(min(room, policy.min_replicas - replicas))
    if queue.waiting <= 0:
        return None, 0
    if replicas == 0:
        return "cold", 1
    if queue.oldest_wait_s < params.scale_out_wait_s:
        return None, 0
    # as many more replicas as the waiting jobs fill, at the slots the present ones have
    slots = max((n.replicas[model].slots for n in holders if model in n.replicas), default=1)
    return "scale_out", int(min(room, -(-queue.waiting // max(1, slots))))


@dataclass(frozen=True)
class _Others:
    """What eviction must know of the other models."""

    holders: Mapping[str, list[Node]]
    #: (worker, model) pairs kept for a replica policy.
    kept: set[tuple[str, str]]
    #: The last replica of a model goes only if idle at least this long.
    min_idle_s: float

    def victims(self, node: Node, need: int) -> tuple[str, ...] | None:
        """The idle replicas to evict on ``node`` for ``need`` bytes, cheapest first;
        None if the eligible ones are not enough."""
        order: list[tuple[tuple[bool, float, float, str], str]] = []
        for name, replica in node.replicas.items():
            if replica.busy or replica.kept or (node.id, name) in self.kept:
                continue
            last = len(self.holders.get(name, [])) <= 1
            if last and replica.idle_s < self.min_idle_s:
                continue
            order.append(((last, replica.expires_in_s, -replica.idle_s, name), name))
        chosen: list[str] = []
        for _, name in sorted(order):
            chosen.append(name)
            if node.has_room(need, chosen):
                return tuple(chosen)
        return None


def _choose(
    model: str, nodes: Collection[Node], taken: set[str], others: _Others | None
) -> tuple[Node, tuple[str, ...]] | None:
    """The best worker for ``model`` and what it must evict (nothing if ``others`` is
    None): fewest evictions, fewest busy slots, then the tightest fit (small models do not
    fill the big devices that big models need), then the spread hash."""
    best: tuple[tuple[int, int, int, str], Node, tuple[str, ...]] | None = None
    for node in nodes:
        need = node.servable.get(model)
        if need is None or node.id in taken or model in node.replicas:
            continue
        evict: tuple[str, ...] | None = ()
        if not node.has_room(need):
            evict = others.victims(node, need) if others is not None else None
        if evict is None:
            continue
        freed = sum(node.replicas[name].memory for name in evict)
        leftover = node.memory_free + freed - need
        key = (len(evict), node.busy, leftover, _spread(model, node.id))
        if best is None or key < best[0]:
            best = (key, node, evict)
    return None if best is None else (best[1], best[2])


def _spread(model: str, worker: str) -> str:
    """Rendezvous hash: equal workers are ranked differently for each model."""
    return hashlib.blake2b(f"{model}\0{worker}".encode(), digest_size=8).hexdigest()
