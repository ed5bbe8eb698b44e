"""``python -m bench``: single-stream decode tokens/s and time to first token, through Herd
(API + Redis + worker, real processes) and directly through llama-cpp-python, on the same
model, prompt and settings, in one run; prints the ratios.

Greedy sampling and a fixed ``num_predict`` make both sides generate the same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from cli.embedded import EmbeddedRedis
from cli.ports import free_port

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def prompt(run: int) -> str:
    """A different start per run, so neither side reuses the last run's KV prefix."""
    return f"({run}) {PROMPT}"


MODEL = "gemma3:270m"


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    decode_tps: float
    tokens: int


def direct(runs: int, num_predict: int, n_ctx: int) -> list[Sample]:
    import llama_cpp

    from worker.catalog import default_model
    from worker.templates import GemmaTemplate

    threads = os.cpu_count() or 1
    llm = llama_cpp.Llama(
        model_path=str(default_model().path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    from shared.messages import ChatMessage

    samples = []
    for run in range(-1, runs):  # run -1 warms up, as on Herd's side
        text = GemmaTemplate().render([ChatMessage(role="user", content=prompt(run))]).prompt
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
        started = time.perf_counter()
        first = 0.0
        count = 0
        for token in llm.generate(tokens, temp=0.0, top_k=40, top_p=0.9, min_p=0.0):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                break
            count += 1
            llm.detokenize([token])
            if count == 1:
                first = time.perf_counter()
            if count >= num_predict:
                break
        ended = time.perf_counter()
        if run >= 0:
            samples.append(Sample(first - started, (count - 1) / (ended - first), count))
    llm.close()
    return samples


def herd(runs: int, num_predict: int, n_ctx: int) -> list[Sample]:
    api_port, health_port = free_port(), free_port()
    with EmbeddedRedis() as redis:
        env = {
            **os.environ,
            "HERD_REDIS_URL": redis.url,
            "HERD_HOST": f"127.0.0.1:{api_port}",
            "HERD_WORKER_HEALTH_ADDR": f"127.0.0.1:{health_port}",
            "HERD_NUM_CTX": str(n_ctx),
            "HERD_LOG_LEVEL": "warning",
        }
        children = [
            subprocess.Popen([sys.executable, "-m", "cli", role], env=env)
            for role in ("worker", "api")
        ]
        try:
            _wait(f"http://127.0.0.1:{health_port}/readyz")
            _wait(f"http://127.0.0.1:{api_port}/readyz")
            samples = []
            with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120) as client:
                for run in range(-1, runs):
                    body = {
                        "model": MODEL,
                        "messages": [{"role": "user", "content": prompt(run)}],
                        "options": {"temperature": 0, "num_predict": num_predict},
                    }
                    sample = _one_stream(client, body)
                    if run >= 0:
                        samples.append(sample)
            return samples
        finally:
            for child in children:
                child.terminate()
            for child in children:
                child.wait(timeout=30)


def _one_stream(client: httpx.Client, body: dict[str, Any]) -> Sample:
    started = time.perf_counter()
    first = 0.0
    count = 0
    with client.stream("POST", "/api/chat", json=body) as response:
        for line in response.iter_lines():
            chunk = orjson.loads(line)
            if chunk["done"]:
                count = int(chunk["eval_count"])
                break
            if not first and chunk["message"]["content"]:
                first = time.perf_counter()
    ended = time.perf_counter()
    return Sample(first - started, (count - 1) / (ended - first), count)


def _wait(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--num-predict", type=int, default=128)
    parser.add_argument("--num-ctx", type=int, default=4096)
    args = parser.parse_args()

    direct_samples = direct(args.runs, args.num_predict, args.num_ctx)
    herd_samples = herd(args.runs, args.num_predict, args.num_ctx)

    def tps(samples: list[Sample]) -> float:
        return statistics.median(s.decode_tps for s in samples)

    def ttft_ms(samples: list[Sample]) -> float:
        return 1000 * statistics.median(s.ttft_s for s in samples)

    rows = [
        ("decode tokens/s (median)", tps(direct_samples), tps(herd_samples)),
        ("time to first token, ms (median)", ttft_ms(direct_samples), ttft_ms(herd_samples)),
    ]
    print(f"model {MODEL}, {args.runs} runs of {args.num_predict} tokens, cpus={os.cpu_count()}")
    print(f"tokens: direct {[s.tokens for s in direct_samples]}")
    print(f"tokens: herd   {[s.tokens for s in herd_samples]}")
    print(f"{'metric':<36}{'llama-cpp-python':>18}{'herd':>12}{'herd/direct':>14}")
    for name, a, b in rows:
        print(f"{name:<36}{a:>18.1f}{b:>12.1f}{b / a:>14.3f}")


if __name__ == "__main__":
    main()
