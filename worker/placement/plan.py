"""Where models should be loaded: a pure function of the cluster's state.

Every worker runs ``plan`` on the same view (the adverts, each model's queue, the replica
policies, the load tickets) and acts only on the loads it is named for; a load ticket in
Redis (``worker.placement.tickets``) makes sure that two workers whose views differ for a
moment never both load one model. The simulation in ``bench.placement`` runs this same
function against a thousand simulated workers.

The rules, per model, most urgent first (the oldest waiting job):

- below its policy's ``min_replicas``: load one more, even with nothing queued;
- jobs waiting and no replica (cold): load one, evicting idle models if need be;
- jobs waiting longer than ``scale_out_wait_s`` and fewer than ``max_replicas``: load one
  more, only into free memory (a scale-out never evicts anything);
- a model with a load under way or cooling down (its ticket is held) gets no other.

A worker is chosen among those that have the model's file and are loading nothing: first
those where it fits in free memory, then those where it fits once idle models go; among
them the fewest busy slots, then the most free memory, then a hash of (model, worker), so
equal workers share the models out instead of all picking the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
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

    def evictable(self) -> int:
        """Memory the idle, unkept replicas hold."""
        return sum(r.memory for r in self.replicas.values() if not r.busy and not r.kept)

    def has_room(self, need: int, *, evicting: bool) -> bool:
        idle = sum(1 for r in self.replicas.values() if not r.busy and not r.kept)
        count = len(self.replicas) + len(self.loading)
        if self.max_loaded and count >= self.max_loaded and not (evicting and idle):
            return False
        free = self.memory_free + (self.evictable() if evicting else 0)
        return need <= free


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
    #: Idle models must be evicted on that worker to make room.
    evicting: bool


@dataclass(frozen=True)
class Params:
    scale_out_wait_s: float = 3.0


@dataclass
class Plan:
    loads: list[Load] = field(default_factory=list)
    #: Per worker, the models it keeps for their ``min_replicas`` (never evicted).
    kept: dict[str, set[str]] = field(default_factory=dict)
    #: Models with demand that fit on none of the workers that have them, even empty.
    unplaceable: list[str] = field(default_factory=list)

    def for_worker(self, worker: str) -> list[Load]:
        return [load for load in self.loads if load.worker == worker]


def plan(
    nodes: Collection[Node],
    demand: Mapping[str, Demand],
    policies: Mapping[str, ReplicaPolicy],
    held: Collection[str],
    params: Params,
) -> Plan:
    """Loads to start now (at most one per worker), the replicas to keep, and the
    models that fit nowhere. ``held``: models whose load ticket is taken."""
    result = Plan()
    holders: dict[str, list[Node]] = {}
    for node in nodes:
        for model in [*node.replicas, *node.loading]:
            holders.setdefault(model, []).append(node)
    for model, policy in policies.items():
        for node in sorted(holders.get(model, []), key=lambda n: n.id)[: policy.min_replicas]:
            result.kept.setdefault(node.id, set()).add(model)
            if model in node.replicas:
                node.replicas[model] = dataclasses.replace(node.replicas[model], kept=True)

    wanted = {m for m, d in demand.items() if d.waiting > 0}
    wanted |= {m for m, p in policies.items() if p.min_replicas > 0}
    urgency = sorted(wanted, key=lambda m: (-demand.get(m, Demand()).oldest_wait_s, m))
    ready = [node for node in nodes if not node.loading]
    for model in urgency:
        if model in held:
            continue
        reason = _reason(
            len(holders.get(model, [])), demand.get(model, Demand()), policies.get(model), params
        )
        if reason is None:
            continue
        chosen = _choose(model, ready, evicting=reason != "scale_out")
        if chosen is None:
            if reason == "cold" and not any(
                model in n.servable and n.servable[model] <= n.memory_total for n in nodes
            ):
                result.unplaceable.append(model)
            continue
        node, evicting = chosen
        result.loads.append(Load(model, node.id, reason, evicting))
        node.loading.add(model)  # this worker takes no second load in this plan
        ready.remove(node)
    return result


def _reason(
    replicas: int, demand: Demand, policy: ReplicaPolicy | None, params: Params
) -> Reason | None:
    policy = policy or ReplicaPolicy()
    if policy.max_replicas is not None and replicas >= policy.max_replicas:
        return None
    if replicas < policy.min_replicas:
        return "min_replicas"
    if demand.waiting <= 0:
        return None
    if replicas == 0:
        return "cold"
    if demand.oldest_wait_s >= params.scale_out_wait_s:
        return "scale_out"
    return None


def _choose(model: str, nodes: list[Node], *, evicting: bool) -> tuple[Node, bool] | None:
    best: tuple[tuple[int, int, int, str], Node, bool] | None = None
    for node in nodes:
        need = node.servable.get(model)
        if need is None or model in node.replicas:
            continue
        if node.has_room(need, evicting=False):
            needs_eviction = False
        elif evicting and node.has_room(need, evicting=True):
            needs_eviction = True
        else:
            continue
        key = (int(needs_eviction), node.busy, -node.memory_free, _spread(model, node.id))
        if best is None or key < best[0]:
            best = (key, node, needs_eviction)
    return None if best is None else (best[1], best[2])


def _spread(model: str, worker: str) -> str:
    """Rendezvous hash: equal workers are ranked differently for each model."""
    return hashlib.blake2b(f"{model}\0{worker}".encode(), digest_size=8).hexdigest()
