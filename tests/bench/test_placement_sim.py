"""``bench.placement``: the simulation accounts for every job, runs the workers' own
``plan``, keeps placement's invariants, and (issue 10's acceptance) places with fewer
loads and a lower p99 queue wait than the policy before placement."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

import worker.placement.plan
from bench import placement
from bench.placement import Config, Result, simulate, table

QUICK = Config().quick()


@pytest.fixture(scope="module")
def quick() -> tuple[Result, Result]:
    herd, today = simulate(QUICK, ("herd", "today"))
    return herd, today


def test_the_workers_plan_function_is_the_one_simulated() -> None:
    assert vars(placement)["plan"] is worker.placement.plan.plan


@pytest.mark.parametrize(("seed", "file_share"), [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.3)])
def test_every_job_runs_or_is_counted_and_herd_keeps_its_invariants(
    seed: int, file_share: float
) -> None:
    config = replace(QUICK, seed=seed, file_share=file_share)
    results = simulate(config, placement.POLICIES)
    for result in results:
        assert result.jobs > 0
        assert result.completed + result.failed + result.timed_out == result.jobs
        assert result.double_loads == 0
    herd = results[0]
    assert herd.policy == "herd"
    assert herd.oversubscribed == 0  # never past a worker's memory
    assert herd.failed == herd.failed_loads == 0
    assert herd.plan_calls > 0 and herd.loads > 0


def test_calling_plan_only_when_it_has_something_to_decide_changes_nothing() -> None:
    (gated,) = simulate(QUICK, ("herd",))
    (every,) = simulate(QUICK, ("herd",), every_tick=True)
    timing = {"plan_calls", "plan_s", "sim_s"}
    assert every.plan_calls > gated.plan_calls
    for f in dataclasses.fields(Result):
        if f.name not in timing:
            assert getattr(gated, f.name) == getattr(every, f.name), f.name


def test_the_same_seed_gives_the_same_figures() -> None:
    first, second = simulate(QUICK, ("today",)), simulate(QUICK, ("today",))
    assert replace(first[0], sim_s=0.0) == replace(second[0], sim_s=0.0)


def test_the_table_has_a_column_per_policy(quick: tuple[Result, Result]) -> None:
    markdown = table(quick, markdown=True).splitlines()
    assert markdown[0] == "|  | herd | today |"
    assert all(line.count("|") == 4 for line in markdown)
    assert any(line.startswith("| queue wait p99 (s) |") for line in markdown)


def test_herd_loads_fewer_models_than_today(quick: tuple[Result, Result]) -> None:
    herd, today = quick
    assert herd.loads < today.loads


def test_herd_waits_less_at_p99_than_today(quick: tuple[Result, Result]) -> None:
    herd, today = quick
    assert herd.wait_p99 < today.wait_p99
