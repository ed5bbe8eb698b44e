"""``herd push MODEL [--insecure]``: a model of the cluster's store to its registry, with
``ollama push``'s display (a bar per layer, then the status lines). The push runs in the API
process for as long as this command follows it; run it again to finish an interrupted one
(the blobs the registry has are skipped)."""

from __future__ import annotations

import httpx
from rich.console import Console

from cli.pull import transfer


def push(client: httpx.Client, model: str, *, insecure: bool, console: Console) -> None:
    transfer(client, "/api/push", model, insecure=insecure, console=console)
