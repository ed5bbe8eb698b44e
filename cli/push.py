"""``herd push MODEL [--insecure]``: a model of the cluster's store to its registry, with
``ollama push``'s display (a bar per layer, then the status lines). The push runs in the API
process for as long as this command follows it; run it again to finish an interrupted one
(the blobs the registry has are skipped)."""

from __future__ import annotations

import httpx
from rich.console import Console

from cli.pull import _show as show_progress
from cli.verbs import VerbError
from cli.verbs import _error_text as error_text


def push(client: httpx.Client, model: str, *, insecure: bool, console: Console) -> None:
    body = {"model": model, "insecure": insecure, "stream": True}
    try:
        with client.stream("POST", "/api/push", json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise VerbError(error_text(response))
            show_progress(response, console)  # the same lines as a pull's: digest bars, statuses
    except httpx.HTTPError as exc:
        raise VerbError(f"could not reach Herd: {exc}") from exc
