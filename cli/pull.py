"""``herd pull MODEL [--insecure]``: a model from its registry into the cluster's store, with
``ollama pull``'s display (a bar per layer with its size and speed, then the status lines).
The pull runs on the workers: interrupting this leaves it running; the same command again
follows it to the end."""

from __future__ import annotations

import httpx
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cli.verbs import VerbError, error_text


def pull(client: httpx.Client, model: str, *, insecure: bool, console: Console) -> None:
    transfer(client, "/api/pull", model, insecure=insecure, console=console)


def transfer(
    client: httpx.Client, route: str, model: str, *, insecure: bool, console: Console
) -> None:
    """Follow a pull's or a push's progress lines (the same shapes: digest bars, statuses)."""
    body = {"model": model, "insecure": insecure, "stream": True}
    try:
        with client.stream("POST", route, json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise VerbError(error_text(response))
            _show(response, console)
    except httpx.HTTPError as exc:
        raise VerbError(f"could not reach Herd: {exc}") from exc


def _show(response: httpx.Response, console: Console) -> None:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    bars: dict[str, TaskID] = {}
    progress: Progress | None = None  # live while layers come; the status lines go below it
    try:
        for raw in response.iter_lines():
            if not raw:
                continue
            line = orjson.loads(raw)
            if "error" in line:
                raise VerbError(str(line["error"]))
            digest = line.get("digest")
            if digest:
                if progress is None:
                    progress = Progress(*columns, console=console)
                    progress.start()
                if digest not in bars:
                    bars[digest] = progress.add_task(line["status"], total=line.get("total"))
                progress.update(bars[digest], completed=line.get("completed", 0))
                continue
            if progress is not None:  # the bars stay, as printed last
                progress.stop()
                progress, bars = None, {}
            console.print(line.get("status", ""))
    finally:
        if progress is not None:
            progress.stop()
