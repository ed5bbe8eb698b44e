"""The ``herd`` client verbs, as the ``ollama`` CLI has them: ``list``, ``ps``, ``show``,
``run``, ``stop``, ``cp``, ``rm``. They talk to the API at ``HERD_HOST`` (0.0.0.0 and ::
mean this machine) over the Ollama API itself, so they work against any Herd (or Ollama).
Herd's own: ``cluster`` and ``scale`` (its /api/cluster and /api/scale), and the WORKERS
column of ``ps``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

import httpx
import orjson

from shared.hostaddr import HostAddress

#: Long enough for a model load and a whole answer, which streams anyway.
TIMEOUT = httpx.Timeout(10.0, read=600.0)


class VerbError(Exception):
    """The API's ``{"error": ...}`` (or transport failure), for the CLI to print."""


def base_url(host: HostAddress) -> str:
    target = "127.0.0.1" if host.host in ("0.0.0.0", "::") else host.host
    return HostAddress(host.scheme, target, host.port).url


def human_size(n: int) -> str:
    """Decimal units, as the ollama CLI prints sizes."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "    ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


class Verbs:
    def __init__(self, client: httpx.Client, out: TextIO = sys.stdout) -> None:
        self._client = client
        self._out = out

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise VerbError(f"could not reach Herd: {exc}") from exc
        if response.status_code >= 400:
            raise VerbError(error_text(response))
        return orjson.loads(response.content) if response.content else None

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def list_models(self) -> None:
        rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
        for model in self._request("GET", "/api/tags")["models"]:
            rows.append(
                [model["name"], model["digest"][:12], human_size(model["size"]),
                 _when(model["modified_at"])]
            )  # fmt: skip
        self._write(table(rows) + "\n")

    def ps(self) -> None:
        """``ollama ps``'s columns, and the workers each model is loaded on (from Herd's
        /api/cluster; against an Ollama, which has none, that column is left out)."""
        models = self._request("GET", "/api/ps")["models"]
        try:
            cluster: dict[str, Any] | None = self._request("GET", "/api/cluster")
        except VerbError:
            cluster = None
        rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
        if cluster is not None:
            rows[0].append("WORKERS")
            where = _placements(cluster)
        for model in models:
            on_gpu = model.get("size_vram", 0) >= model["size"] > 0
            rows.append(
                [model["name"], model["digest"][:12], human_size(model["size"]),
                 "100% GPU" if on_gpu else "100% CPU", str(model.get("context_length", "")),
                 _when(model["expires_at"])]
            )  # fmt: skip
            if cluster is not None:
                rows[-1].append(where(model["name"], model["expires_at"]))
        self._write(table(rows) + "\n")

    def cluster(self) -> None:
        """The live workers: memory models take (used/total), slots busy, models loaded."""
        rows = [["ID", "HOST", "MEMORY", "SLOTS", "LOADED"]]
        for worker in self._request("GET", "/api/cluster")["workers"]:
            total, free = worker["memory_total"], worker["memory_free"]
            memory = f"{human_size(total - free)}/{human_size(total)}" if total else "-"
            slots = worker["slots"]
            loaded = [m["name"] for m in worker["loaded"]]
            loaded += [f"{name} (loading)" for name in worker["loading"]]
            rows.append(
                [worker["id"], worker["host"], memory,
                 f"{slots['total'] - slots['free']}/{slots['total']}", ", ".join(loaded)]
            )  # fmt: skip
        self._write(table(rows) + "\n")

    def scale(self, model: str, min_replicas: int, max_replicas: int | None) -> None:
        """Set ``model``'s replica policy (``--min 0`` without ``--max`` removes it)."""
        body = {"model": model, "min_replicas": min_replicas, "max_replicas": max_replicas}
        answer = self._request("POST", "/api/scale", body)
        name, policy = answer["model"], answer["policy"]
        if policy is None:
            self._write(f"removed the replica policy of '{name}'\n")
            return
        most = policy["max_replicas"]
        limit = f", max {most}" if most is not None else ""
        self._write(f"scaled '{name}': min {policy['min_replicas']}{limit}\n")

    def dlq(self, action: str, entry: str | None) -> None:
        """List the dead-letter stream, or drop or run one entry again."""
        if action == "list":
            rows = [["ID", "MODEL", "KIND", "ATTEMPTS", "LAST WORKER", "SET ASIDE"]]
            for item in self._request("GET", "/api/dlq")["entries"]:
                when = datetime.fromtimestamp(item["at_ms"] / 1000).astimezone()
                rows.append(
                    [item["id"], item["model"], item["kind"], str(item["attempts"]),
                     item["last_worker"], when.strftime("%Y-%m-%d %H:%M:%S")]
                )  # fmt: skip
            self._write(table(rows) + "\n")
            return
        if entry is None:
            raise VerbError(f"dlq {action} needs an entry id (herd dlq lists them)")
        if action == "drop":
            self._request("DELETE", f"/api/dlq/{entry}")
            self._write(f"dropped {entry}\n")
            return
        answer = self._request("POST", f"/api/dlq/{entry}/retry")
        self._write(f"{answer['response']}\n(done: {answer['done_reason']})\n")

    def show(self, model: str) -> None:
        info = self._request("POST", "/api/show", {"model": model})
        details = info.get("details", {})
        model_info = info.get("model_info") or {}
        arch = model_info.get("general.architecture", details.get("family", ""))
        rows = [
            ["architecture", arch],
            ["parameters", details.get("parameter_size", "")],
            ["context length", str(model_info.get(f"{arch}.context_length", ""))],
            ["embedding length", str(model_info.get(f"{arch}.embedding_length", ""))],
            ["quantization", details.get("quantization_level", "")],
        ]
        lines = ["  Model", _indent(table(rows))]
        if info.get("capabilities"):
            lines += ["", "  Capabilities", _indent("\n".join(info["capabilities"]))]
        if info.get("parameters"):
            lines += ["", "  Parameters", _indent(info["parameters"].strip())]
        if info.get("license"):
            lines += ["", "  License", _indent(info["license"].strip().splitlines()[0])]
        self._write("\n".join(lines) + "\n\n")

    def run(self, model: str, prompt: str | None, read: Callable[[], str | None]) -> None:
        """One answer to ``prompt``, or a conversation over the lines ``read`` returns."""
        if prompt is not None:
            self._chat(model, [{"role": "user", "content": prompt}])
            return
        history: list[dict[str, Any]] = []
        while (line := read()) is not None:
            if not line.strip():
                continue
            if line.strip() in ("/bye", "/exit"):
                break
            history.append({"role": "user", "content": line})
            history.append({"role": "assistant", "content": self._chat(model, history)})

    def _chat(self, model: str, messages: list[dict[str, Any]]) -> str:
        body = {"model": model, "messages": messages, "stream": True}
        parts: list[str] = []
        for chunk in self._stream("/api/chat", body):
            text = chunk.get("message", {}).get("content", "")
            parts.append(text)
            self._write(text)
        self._write("\n\n")
        return "".join(parts)

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise VerbError(error_text(response))
                for line in response.iter_lines():
                    if line.strip():
                        chunk: dict[str, Any] = orjson.loads(line)
                        if "error" in chunk:
                            raise VerbError(str(chunk["error"]))
                        yield chunk
        except httpx.HTTPError as exc:
            raise VerbError(f"could not reach Herd: {exc}") from exc

    def stop(self, model: str) -> None:
        self._request("POST", "/api/generate", {"model": model, "keep_alive": 0})

    def cp(self, source: str, destination: str) -> None:
        self._request("POST", "/api/copy", {"source": source, "destination": destination})
        self._write(f"copied '{source}' to '{destination}'\n")

    def rm(self, models: list[str]) -> None:
        for model in models:
            self._request("DELETE", "/api/delete", {"model": model})
            self._write(f"deleted '{model}'\n")


def error_text(response: httpx.Response) -> str:
    try:
        error = orjson.loads(response.content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    return str(error) if error else response.text.strip() or f"HTTP {response.status_code}"


def _placements(cluster: dict[str, Any]) -> Callable[[str, str], str]:
    """For a row of /api/ps (name, expires_at): the worker it is on. /api/ps has a row per
    worker a model is loaded on, which its expiry tells apart; a row that matches no
    worker (it changed between the two reads) shows every worker the model is on."""
    free: dict[tuple[str, str], list[str]] = {}
    for worker in cluster["workers"]:
        for loaded in worker["loaded"]:
            free.setdefault((loaded["name"], loaded["expires_at"]), []).append(worker["id"])

    def where(name: str, expires_at: str) -> str:
        ids = free.get((name, expires_at))
        if ids:
            return ids.pop(0)
        return ",".join(cluster["models"].get(name, {}).get("replicas", []))

    return where


def _when(stamp: str) -> str:
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if moment.year > 2200:  # kept forever (Ollama shows now + 292 years)
        return "Forever"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())
