"""``herd top``: the cluster at a glance, refreshed every second (nvidia-smi meets htop).

One table of workers (memory, slots, models loaded and loading) and one of models
(replicas, queue, tokens/s), from the API's /api/cluster, as the status page shows them.
Tokens/s comes from two successive reads (the tokens every worker generated, cluster-wide),
so ``--once`` has none to show.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.verbs import VerbError, human_size

INTERVAL_S = 1.0
BAR_WIDTH = 20


@dataclass
class Sample:
    cluster: dict[str, Any]
    #: Tokens/s by model since the previous sample; None on the first.
    rates: dict[str, float] | None = None
    at: datetime = field(default_factory=datetime.now)


class Sampler:
    """Reads /api/cluster; keeps the last token counts for the rates."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client
        self._last: tuple[float, dict[str, float]] | None = None

    def sample(self) -> Sample:
        cluster = orjson.loads(self._get("/api/cluster").content)
        # each worker counts since it started: a restarted one's drop is no negative rate
        counts = {m: float(v.get("tokens_generated", 0)) for m, v in cluster["models"].items()}
        now = time.monotonic()
        rates: dict[str, float] | None = None
        if self._last is not None:
            then, before = self._last
            rates = {m: max(0.0, n - before.get(m, 0.0)) / (now - then) for m, n in counts.items()}
        self._last = (now, counts)
        return Sample(cluster, rates)

    def _get(self, path: str) -> httpx.Response:
        try:
            response = self._client.get(path)
        except httpx.HTTPError as exc:
            raise VerbError(f"could not reach Herd: {exc}") from exc
        if response.status_code >= 400:
            raise VerbError(_error(response))
        return response


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.reason_phrase}"


def bar(used: int, total: int, width: int = BAR_WIDTH) -> Text:
    """``████░░░░ 1.2 GB/8.0 GB``, yellow past 80 %, red past 95 %."""
    if total <= 0:
        return Text("-")
    share = min(1.0, max(0.0, used / total))
    filled = round(share * width)
    color = "red" if share >= 0.95 else "yellow" if share >= 0.8 else "green"
    text = Text("█" * filled, style=color)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {human_size(used)}/{human_size(total)}")
    return text


def _workers(cluster: dict[str, Any]) -> Table:
    table = Table(title="Workers", title_justify="left", expand=True)
    for name in ("ID", "HOST", "MEMORY", "SLOTS", "MODELS"):
        table.add_column(name, no_wrap=name != "MODELS")
    for w in cluster["workers"]:
        slots = w["slots"]
        models = Text(", ".join(f"{m['name']} {m['slots']['busy']}/{m['slots']['total']}"
                                for m in w["loaded"]))  # fmt: skip
        for name in w["loading"]:
            models.append(", " if models else "")
            models.append(f"{name} (loading)", style="yellow")
        ready = Text(w["id"], style="bold" if w["ready"] else "yellow")
        table.add_row(
            ready,
            w["host"],
            bar(w["memory_total"] - w["memory_free"], w["memory_total"]),
            f"{slots['total'] - slots['free']}/{slots['total']}",
            models,
        )
    return table


def _models(cluster: dict[str, Any], rates: dict[str, float] | None) -> Table:
    table = Table(title="Models", title_justify="left", expand=True)
    for name in ("MODEL", "REPLICAS", "LOADING", "WAITING", "RUNNING", "OLDEST", "TOKENS/S"):
        table.add_column(name, justify="left" if name in ("MODEL", "REPLICAS") else "right")
    for name, m in cluster["models"].items():
        table.add_row(
            name,
            f"{len(m['replicas'])} {', '.join(m['replicas'])}".strip(),
            str(len(m["loading"])),
            Text(str(m["waiting"]), style="bold red" if m["waiting"] else ""),
            str(m["pending"]),
            f"{m['oldest_wait_s']:.1f}s" if m["oldest_wait_s"] else "-",
            "-" if rates is None else f"{rates.get(name, 0.0):.1f}",
        )
    return table


def frame(sample: Sample) -> RenderableType:
    cluster, rates = sample.cluster, sample.rates
    workers = cluster["workers"]
    busy = sum(w["slots"]["total"] - w["slots"]["free"] for w in workers)
    total = sum(w["slots"]["total"] for w in workers)
    waiting = sum(m["waiting"] for m in cluster["models"].values())
    tps = "-" if rates is None else f"{sum(rates.values()):.1f}"
    header = Text.assemble(
        ("herd top", "bold"),
        f"  {len(workers)} workers  slots {busy}/{total} busy  {waiting} waiting  "
        f"{tps} tokens/s  {sample.at:%H:%M:%S}",
    )
    return Group(header, _workers(cluster), _models(cluster, rates))


def top(
    client: httpx.Client, console: Console, *, once: bool = False, interval_s: float = INTERVAL_S
) -> None:
    """Print one frame (``once``), or redraw it every ``interval_s`` until interrupted; an
    API that stops answering is shown as such, and the view resumes when it is back."""
    sampler = Sampler(client)
    if once:
        console.print(frame(sampler.sample()))
        return
    with Live(console=console, auto_refresh=False) as live:
        while True:
            try:
                view: RenderableType = frame(sampler.sample())
            except VerbError as exc:
                view = Text(f"herd top: {exc}", style="red")
            live.update(view, refresh=True)
            time.sleep(interval_s)
