"""The bench's results: summaries of rounds, the tables printed (Markdown, ready for
docs/benchmarks.md), the JSON document and the plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.common import Round, Stream, percentile

CEILING, HERD, SERVER, DIRECT = "ceiling", "herd", "llama-server", "direct"
#: The single-stream side that runs Herd's engine alone (``bench.engine_alone``).
ENGINE = "engine"
#: The issue's targets.
TARGET_VS_CEILING = 0.9
TARGET_VS_SERVER = 1.05
TARGET_SINGLE = 0.97
TARGET_TTFT_OVERHEAD_MS = 5.0


def summary(streams: Iterable[Stream], rates: list[float]) -> dict[str, Any]:
    """Aggregate tokens/s (median over trials), TTFT and inter-token latency percentiles
    (over every stream and gap of every trial), in ms."""
    pooled = list(streams)
    ttft = [s.ttft for s in pooled]
    gaps = [g for s in pooled for g in s.gaps()]
    return {
        "tps": statistics.median(rates) if rates else math.nan,
        "tps_trials": rates,
        "streams": len(pooled),
        "tokens": sorted({s.tokens for s in pooled}),
        "ttft_p50_ms": 1000 * percentile(ttft, 50),
        "ttft_p99_ms": 1000 * percentile(ttft, 99),
        "itl_p50_ms": 1000 * percentile(gaps, 50),
        "itl_p99_ms": 1000 * percentile(gaps, 99),
        "decode_tps_p50": percentile([s.decode_tps for s in pooled], 50),
    }


def summarize_rounds(rounds: list[Round]) -> dict[str, Any]:
    return summary((s for r in rounds for s in r.streams), [r.tps for r in rounds])


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _f(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _mark(value: float, target: float) -> str:
    if math.isnan(value):
        return ""
    return " ✓" if value >= target else " ✗"


def single_table(single: dict[str, Any]) -> str:
    d, h = single[DIRECT], single[HERD]
    e = single.get(ENGINE)

    def mid(cell: Callable[[dict[str, Any]], str]) -> str:
        """Herd's engine alone, when measured: between direct and Herd."""
        return f" {cell(e)} |" if e is not None else ""

    rows = [
        "| metric | llama-cpp-python |"
        + (" Herd's engine alone |" if e is not None else "")
        + " herd | herd vs direct |",
        "|---|---:|" + ("---:|" if e is not None else "") + "---:|---:|",
        f"| decode tokens/s (p50 of streams) | {_f(d['decode_tps_p50'])} |"
        + mid(lambda s: _f(s["decode_tps_p50"]))
        + f" {_f(h['decode_tps_p50'])} | {_f(single['decode_ratio'], 3)}"
        f"{_mark(single['decode_ratio'], TARGET_SINGLE)} |",
        f"| TTFT p50, ms | {_f(d['ttft_p50_ms'])} |"
        + mid(lambda s: _f(s["ttft_p50_ms"]))
        + f" {_f(h['ttft_p50_ms'])} | {single['ttft_overhead_p50_ms']:+.1f}"
        f"{_mark(TARGET_TTFT_OVERHEAD_MS - single['ttft_overhead_p50_ms'], 0)} |",
        f"| TTFT p99, ms | {_f(d['ttft_p99_ms'])} |"
        + mid(lambda s: _f(s["ttft_p99_ms"]))
        + f" {_f(h['ttft_p99_ms'])} | {h['ttft_p99_ms'] - d['ttft_p99_ms']:+.1f} |",
        f"| inter-token p50, ms | {_f(d['itl_p50_ms'], 2)} |"
        + mid(lambda s: _f(s["itl_p50_ms"], 2))
        + f" {_f(h['itl_p50_ms'], 2)} | |",
        f"| inter-token p99, ms | {_f(d['itl_p99_ms'], 2)} |"
        + mid(lambda s: _f(s["itl_p99_ms"], 2))
        + f" {_f(h['itl_p99_ms'], 2)} | |",
        f"| tokens per stream | {d['tokens']} |"
        + mid(lambda s: str(s["tokens"]))
        + f" {h['tokens']} | |",
    ]
    if e is not None:
        rows.append(
            f"\nHerd's engine alone against direct: decode "
            f"{_f(e['decode_tps_p50'] / d['decode_tps_p50'], 3)}x; Herd against its own "
            f"engine: decode {_f(h['decode_tps_p50'] / e['decode_tps_p50'], 3)}x (what "
            "Redis, the API, HTTP and the client cost the stream)."
        )
    split = single.get("herd_ttft_split_p50_ms")
    if split:
        rows.append(
            f"\nHerd's TTFT p50 {_f(split['client_ttft_ms'])} ms = queue and claim "
            f"(load_duration) {_f(split['queue_ms'])} + prefill (prompt_eval_duration) "
            f"{_f(split['prefill_ms'])} + the rest (prompt building, relay, HTTP) "
            f"{_f(split['rest_ms'])} (medians, so the parts only roughly add up)."
        )
    cpu = single.get("cpu_ms_per_request")
    if cpu:
        own = (DIRECT, ENGINE)
        herd_total = sum(v for k, v in cpu.items() if k not in own)
        parts = ", ".join(f"{k} {_f(v)}" for k, v in cpu.items() if k not in own)
        engine = f"; Herd's engine alone {_f(cpu[ENGINE])}" if ENGINE in cpu else ""
        rows.append(
            f"\nCPU ms per request: direct {_f(cpu.get(DIRECT, math.nan))}{engine}; "
            f"herd {_f(herd_total)} ({parts})."
        )
    return "\n".join(rows)


def concurrency_tables(cells: dict[str, dict[str, Any]], new_tokens: list[int]) -> str:
    """Per new-token count: one row per concurrency, the three sides and the ratios."""
    out = []
    for k in new_tokens:
        out.append(f"\n**{k} new tokens per stream**\n")
        out.append(
            "| streams | side | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | tokens |"
        )
        out.append("|---:|---|---:|---:|---:|---:|---:|---|")
        for cell in sorted(cells.values(), key=lambda c: c["n"]):
            if cell["new_tokens"] != k:
                continue
            for side in (CEILING, HERD, SERVER):
                s = cell.get(side)
                if s is None:
                    continue
                out.append(
                    f"| {cell['n']} | {side} | {_f(s['tps'])} | {_f(s['ttft_p50_ms'])} | "
                    f"{_f(s['ttft_p99_ms'])} | {_f(s['itl_p50_ms'], 2)} | "
                    f"{_f(s['itl_p99_ms'], 2)} | {s['tokens']} |"
                )
        out.append("")
        out.append(
            f"| streams | herd / ceiling (≥ {TARGET_VS_CEILING}) | "
            f"herd / llama-server (≥ {TARGET_VS_SERVER} at 4-16) |"
        )
        out.append("|---:|---:|---:|")
        for cell in sorted(cells.values(), key=lambda c: c["n"]):
            if cell["new_tokens"] != k:
                continue
            vs_c, vs_s = cell["herd_vs_ceiling"], cell["herd_vs_server"]
            server_mark = _mark(vs_s, TARGET_VS_SERVER) if cell["n"] >= 4 else ""
            out.append(
                f"| {cell['n']} | {_f(vs_c, 3)}{_mark(vs_c, TARGET_VS_CEILING)} | "
                f"{_f(vs_s, 3)}{server_mark} |"
            )
    return "\n".join(out)


def make_cell(n: int, k: int, rounds: dict[str, list[Round]]) -> dict[str, Any]:
    result: dict[str, Any] = {"n": n, "new_tokens": k}
    for side, side_rounds in rounds.items():
        if side_rounds:
            result[side] = summarize_rounds(side_rounds)
    herd = result.get(HERD, {}).get("tps", math.nan)
    result["herd_vs_ceiling"] = _ratio(herd, result.get(CEILING, {}).get("tps", math.nan))
    result["herd_vs_server"] = _ratio(herd, result.get(SERVER, {}).get("tps", math.nan))
    return result


def dispatch_table(dispatch: dict[str, Any]) -> str:
    c, j = dispatch["chunks"], dispatch["jobs"]
    long = dispatch.get("long")
    rows = [
        "| measure | clients | seconds | count | per second | goal | API CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| token chunks received (streaming, 11-piece answers) | {c['clients']} | "
        f"{c['seconds']} | {c['chunks']} | {_f(c['chunks_per_s'], 0)}"
        f"{_mark(c['chunks_per_s'], 50_000)} | 50 000 | {_f(c['api_us_per_chunk'], 1)} µs "
        "per chunk |",
    ]
    if long is not None:
        n = dispatch["long_tokens"]
        rows += [
            f"| token chunks received (streaming, {n}-token answers) | {long['clients']} | "
            f"{long['seconds']} | {long['chunks']} | {_f(long['chunks_per_s'], 0)}"
            f"{_mark(long['chunks_per_s'], 50_000)} | 50 000 | "
            f"{_f(long['api_us_per_chunk'], 1)} µs per chunk |",
            f"| tokens in those chunks | | | {long['tokens']} | "
            f"{_f(long['tokens_per_s'], 0)} | | "
            f"{_f(1e6 * long['api_cpu_s'] / max(1, long['all_jobs'] * n), 1)} µs per token |",
        ]
    rows += [
        f"| jobs completed (num_predict 1) | {j['clients']} | {j['seconds']} | "
        f"{j['jobs']} | {_f(j['jobs_per_s'], 0)}{_mark(j['jobs_per_s'], 1_000)} | 1 000 | "
        f"{_f(j['api_us_per_job'], 0)} µs per job |",
        f"| errors (non-200) | | | "
        f"{c['errors'] + j['errors'] + (long['errors'] if long else 0)} | | | |",
    ]
    return "\n".join(rows)


def plot(cells: dict[str, dict[str, Any]], new_tokens: list[int], path: Path) -> None:
    """Aggregate tokens/s and TTFT p50 against concurrency, one column per token count."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(new_tokens), figsize=(6 * len(new_tokens), 8), squeeze=False)
    styles = {CEILING: "k--o", HERD: "C0-o", SERVER: "C1-s"}
    for col, k in enumerate(new_tokens):
        ours = sorted((c for c in cells.values() if c["new_tokens"] == k), key=lambda c: c["n"])
        for row, (metric, label) in enumerate(
            [("tps", "aggregate tokens/s"), ("ttft_p50_ms", "TTFT p50, ms")]
        ):
            ax = axes[row][col]
            for side, style in styles.items():
                points = [(c["n"], c[side][metric]) for c in ours if side in c]
                if points:
                    ax.plot(*zip(*points, strict=True), style, label=side)
            ax.set_xscale("log", base=2)
            ax.set_xticks([c["n"] for c in ours], [str(c["n"]) for c in ours])
            ax.set_xlabel("concurrent streams")
            ax.set_ylabel(label)
            ax.set_title(f"{label}, {k} new tokens")
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
