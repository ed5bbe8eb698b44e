"""The placement plan as a pure function: who loads what, and what is never done."""

from __future__ import annotations

from shared.messages import ReplicaPolicy
from worker.placement.plan import Demand, Node, Params, Replica, plan

GIB = 2**30
PARAMS = Params(scale_out_wait_s=3.0)


def _node(
    worker: str,
    free: int,
    *,
    total: int = 10 * GIB,
    servable: dict[str, int] | None = None,
    replicas: dict[str, Replica] | None = None,
    loading: set[str] | None = None,
    max_loaded: int = 0,
) -> Node:
    return Node(
        id=worker,
        memory_total=total,
        memory_free=free,
        servable=servable if servable is not None else {"m": 4 * GIB, "n": 4 * GIB},
        replicas=replicas or {},
        loading=loading or set(),
        max_loaded=max_loaded,
    )


def test_a_cold_model_with_waiting_jobs_is_loaded_by_exactly_one_worker() -> None:
    nodes = [_node(f"w{i}", 10 * GIB) for i in range(5)]
    result = plan(nodes, {"m": Demand(3, 0.1)}, {}, {}, PARAMS)
    assert len(result.loads) == 1
    assert result.loads[0].model == "m" and result.loads[0].reason == "cold"


def test_the_worker_with_room_is_chosen_over_one_that_must_evict() -> None:
    tight = _node("a", 1 * GIB, replicas={"n": Replica(busy=0, memory=4 * GIB)})
    roomy = _node("b", 6 * GIB)
    result = plan([tight, roomy], {"m": Demand(1, 0.0)}, {}, {}, PARAMS)
    assert [(load.worker, load.evicting) for load in result.loads] == [("b", False)]


def test_among_workers_with_room_the_least_busy_is_chosen() -> None:
    busy = _node("a", 6 * GIB, replicas={"n": Replica(busy=3, memory=4 * GIB)})
    idle = _node("b", 6 * GIB, replicas={"n": Replica(busy=0, memory=4 * GIB)})
    result = plan([busy, idle], {"m": Demand(1, 0.0)}, {}, {}, PARAMS)
    assert [load.worker for load in result.loads] == ["b"]


def test_an_idle_model_is_evicted_only_when_no_worker_has_room() -> None:
    full = _node("a", 1 * GIB, replicas={"n": Replica(busy=0, memory=4 * GIB)})
    result = plan([full], {"m": Demand(1, 0.0)}, {}, {}, PARAMS)
    assert [(load.worker, load.evict) for load in result.loads] == [("a", ("n",))]


def test_a_busy_model_is_never_evicted_for_another() -> None:
    full = _node("a", 1 * GIB, replicas={"n": Replica(busy=1, memory=4 * GIB)})
    result = plan([full], {"m": Demand(5, 60.0)}, {}, {}, PARAMS)
    assert result.loads == []
    assert result.unplaceable == []  # it fits once n goes idle: not an error


def test_a_model_larger_than_every_worker_is_unplaceable() -> None:
    nodes = [_node(w, 10 * GIB, servable={"big": 12 * GIB}) for w in "ab"]
    result = plan(nodes, {"big": Demand(1, 0.0)}, {}, {}, PARAMS)
    assert result.loads == [] and result.unplaceable == ["big"]


def test_a_model_whose_ticket_is_held_gets_no_other_load() -> None:
    nodes = [_node(w, 10 * GIB) for w in "ab"]
    result = plan(nodes, {"m": Demand(4, 30.0)}, {}, {"m": 1}, PARAMS)
    assert result.loads == []


def test_a_model_being_loaded_counts_as_a_replica() -> None:
    loading = _node("a", 6 * GIB, loading={"m"})
    other = _node("b", 10 * GIB)
    result = plan([loading, other], {"m": Demand(1, 0.5)}, {}, {}, PARAMS)
    assert result.loads == []  # no second cold load while the first is under way


def test_a_hot_model_gains_a_replica_only_in_free_memory_after_the_wait() -> None:
    serving = _node("a", 0, replicas={"m": Replica(busy=4, memory=4 * GIB)})
    spare = _node("b", 6 * GIB)
    full = _node("c", 0, replicas={"n": Replica(busy=0, memory=10 * GIB)})
    fresh = plan([serving, spare, full], {"m": Demand(3, 1.0)}, {}, {}, PARAMS)
    assert fresh.loads == []  # the queue has not waited long enough
    hot = plan([serving, spare, full], {"m": Demand(3, 5.0)}, {}, {}, PARAMS)
    assert [(load.worker, load.reason, load.evicting) for load in hot.loads] == [
        ("b", "scale_out", False)
    ]
    # a scale-out never evicts: with no free memory anywhere, nothing happens
    no_room = plan([serving, full], {"m": Demand(3, 5.0)}, {}, {}, PARAMS)
    assert no_room.loads == []


def test_max_replicas_caps_scale_out() -> None:
    serving = _node("a", 0, replicas={"m": Replica(busy=4, memory=4 * GIB)})
    spare = _node("b", 6 * GIB)
    policy = {"m": ReplicaPolicy(max_replicas=1)}
    assert plan([serving, spare], {"m": Demand(3, 9.0)}, policy, {}, PARAMS).loads == []


def test_min_replicas_loads_without_demand_and_keeps_them() -> None:
    holder = _node("a", 6 * GIB, replicas={"m": Replica(busy=0, memory=4 * GIB)})
    spare = _node("b", 10 * GIB)
    policy = {"m": ReplicaPolicy(min_replicas=2)}
    result = plan([holder, spare], {}, policy, {}, PARAMS)
    assert [(load.worker, load.reason) for load in result.loads] == [("b", "min_replicas")]
    assert result.kept == {"a": {"m"}}


def test_a_kept_replica_is_not_counted_as_evictable() -> None:
    holder = _node("a", 1 * GIB, replicas={"m": Replica(busy=0, memory=9 * GIB)})
    policy = {"m": ReplicaPolicy(min_replicas=1)}
    result = plan([holder], {"n": Demand(1, 0.0)}, policy, {}, PARAMS)
    assert result.loads == []  # n would need m evicted, and m is kept


def test_a_worker_takes_one_load_per_plan_and_models_spread() -> None:
    nodes = [_node(w, 10 * GIB) for w in "ab"]
    result = plan(nodes, {"m": Demand(1, 2.0), "n": Demand(1, 1.0)}, {}, {}, PARAMS)
    assert sorted(load.model for load in result.loads) == ["m", "n"]
    assert len({load.worker for load in result.loads}) == 2


def test_the_most_urgent_model_is_placed_first() -> None:
    only = _node("a", 4 * GIB)
    result = plan([only], {"m": Demand(1, 1.0), "n": Demand(1, 8.0)}, {}, {}, PARAMS)
    assert [load.model for load in result.loads] == ["n"]


def test_the_loaded_model_count_limit_is_respected() -> None:
    at_limit = _node("a", 10 * GIB, replicas={"n": Replica(busy=1, memory=GIB)}, max_loaded=1)
    result = plan([at_limit], {"m": Demand(1, 0.0)}, {}, {}, PARAMS)
    assert result.loads == []


def test_workers_without_the_model_file_are_never_chosen() -> None:
    without = _node("a", 10 * GIB, servable={"n": GIB})
    result = plan([without], {"m": Demand(1, 0.0)}, {}, {}, PARAMS)
    assert result.loads == [] and result.unplaceable == ["m"]


def test_a_last_replica_goes_only_if_idle_longer_than_the_cold_model_waited() -> None:
    servable = {"m": 4 * GIB, "n": 5 * GIB, "x": 5 * GIB}
    replicas = {"n": Replica(0, 5 * GIB, idle_s=0.1), "x": Replica(0, 5 * GIB, idle_s=5.0)}
    a = _node("a", 0, servable=servable, replicas=replicas)
    demand = {"m": Demand(1, 1.0)}
    # the least recently used goes first
    assert [load.evict for load in plan([a], demand, {}, {}, PARAMS).loads] == [("x",)]
    # with x busy, n (between two jobs) is not taken for a job that waited less
    a.replicas["x"] = Replica(1, 5 * GIB)
    assert plan([a], demand, {}, {}, PARAMS).loads == []
    # once n has been idle longer than m has waited, the models take turns
    a.replicas["n"] = Replica(0, 5 * GIB, idle_s=1.5)
    assert [load.evict for load in plan([a], demand, {}, {}, PARAMS).loads] == [("n",)]
    # and a cold model that waited starve_s takes any idle replica
    a.replicas["n"] = Replica(0, 5 * GIB, idle_s=0.0)
    starving = {"m": Demand(1, PARAMS.starve_s)}
    assert [load.evict for load in plan([a], starving, {}, {}, PARAMS).loads] == [("n",)]


def test_a_replica_of_a_model_held_elsewhere_goes_first() -> None:
    a = _node("a", 0, replicas={"n": Replica(0, 5 * GIB), "x": Replica(0, 5 * GIB)})
    b = _node("b", 0, replicas={"n": Replica(1, 5 * GIB), "x": Replica(1, 5 * GIB)})
    for node in (a, b):
        node.servable = {"m": 4 * GIB, "n": 5 * GIB, "x": 5 * GIB}
    demand = {"m": Demand(1, 1.0), "n": Demand(1, 0.5), "x": Demand(1, 0.5)}
    result = plan([a, b], demand, {}, {}, PARAMS)
    assert [(load.worker, load.evict) for load in result.loads] == [("a", ("n",))]


def test_a_scale_out_loads_as_many_replicas_as_the_queue_fills() -> None:
    serving = _node("a", 0, replicas={"m": Replica(busy=2, memory=4 * GIB, slots=2)})
    spares = [_node(f"s{i}", 6 * GIB) for i in range(5)]
    queue = {"m": Demand(waiting=7, oldest_wait_s=5.0)}  # 7 jobs at 2 slots: 4 replicas
    result = plan([serving, *spares], queue, {}, {}, PARAMS)
    assert len(result.for_model("m")) == 4
    assert len({load.worker for load in result.loads}) == 4
    # loads under way (or just done, cooling down) count as made
    assert len(plan([serving, *spares], queue, {}, {"m": 3}, PARAMS).loads) == 1
    capped = {"m": ReplicaPolicy(max_replicas=3)}
    assert len(plan([serving, *spares], queue, capped, {}, PARAMS).loads) == 2


def test_the_tightest_fit_is_chosen_so_big_devices_stay_free_for_big_models() -> None:
    small = _node("small", 5 * GIB, total=5 * GIB)
    big = _node("big", 80 * GIB, total=80 * GIB)
    result = plan([big, small], {"m": Demand(1, 0.0)}, {}, {}, PARAMS)
    assert [load.worker for load in result.loads] == ["small"]


def test_the_plan_leaves_its_input_as_it_was() -> None:
    holder = _node("a", 6 * GIB, replicas={"m": Replica(0, 4 * GIB)})
    spare = _node("b", 10 * GIB)
    before = (dict(holder.replicas), set(holder.loading), set(spare.loading))
    plan([holder, spare], {"n": Demand(2, 9.0)}, {"m": ReplicaPolicy(min_replicas=2)}, {}, PARAMS)
    assert (dict(holder.replicas), set(holder.loading), set(spare.loading)) == before
