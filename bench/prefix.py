"""``python -m bench.prefix``: what prefix-aware routing saves a long multi-turn chat.

Two ``herd worker`` processes with the real model behind one API, a conversation with a long
system prompt, turn after turn (streaming /api/chat, greedy, short answers): the time to
first token of every turn after the first, with ``HERD_PREFIX_ROUTING`` on and then off (a
fresh cluster each, so no side finds the other's KV cache). With routing, a turn goes to the
worker that answered the last one and only its new tokens are evaluated; without, it lands
on either worker, and on the other one the whole conversation is read again.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import httpx
import orjson

from bench.common import MODEL
from bench.herd import Cluster

#: About 60 tokens; repeated, it makes the long system prompt.
PARAGRAPH = (
    "The harbour office keeps a ledger of every ship that enters, with its name, its flag, "
    "its cargo and the hour of its arrival, and the clerk copies each entry twice so that "
    "nothing is lost when the ink runs in the damp air of the quay. "
)
QUESTIONS = [
    "Which ship came first today?",
    "What did it carry?",
    "Who copied the entry?",
    "Why twice?",
    "What happens when the ink runs?",
    "Summarise the ledger in one line.",
    "Name another ship.",
    "When did it arrive?",
]


def system_prompt(conversation: int, paragraphs: int) -> str:
    # a different first line per conversation: none shares a prefix with another
    return f"Ledger {conversation}.\n" + PARAGRAPH * paragraphs


def turn(
    client: httpx.Client, messages: list[dict[str, str]], new_tokens: int
) -> tuple[float, str]:
    """One streaming chat turn: its time to the first chunk with text, and the answer."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": messages,
        "options": {"temperature": 0, "num_predict": new_tokens},
    }
    sent, first, answer = time.perf_counter(), 0.0, []
    with client.stream("POST", "/api/chat", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line:
                continue
            chunk = orjson.loads(line)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            text = chunk.get("message", {}).get("content", "")
            if text and not first:
                first = time.perf_counter()
            answer.append(text)
    return first - sent, "".join(answer)


def conversation(url: str, index: int, turns: int, paragraphs: int, new_tokens: int) -> list[float]:
    """TTFT of turns 2..n (the first is never routed: no turn came before it)."""
    messages = [{"role": "system", "content": system_prompt(index, paragraphs)}]
    ttfts = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for number in range(turns):
            messages.append({"role": "user", "content": QUESTIONS[number % len(QUESTIONS)]})
            ttft, answer = turn(client, messages, new_tokens)
            messages.append({"role": "assistant", "content": answer})
            if number:
                ttfts.append(ttft)
    return ttfts


def run(routing: bool, args: argparse.Namespace) -> list[float]:
    env = {
        "HERD_NUM_PARALLEL": "2",
        "HERD_NUM_CTX": str(args.num_ctx),
        "HERD_PREFIX_ROUTING": "true" if routing else "false",
    }
    ttfts: list[float] = []
    with Cluster(env, workers=2) as cluster:
        for index in range(args.conversations):
            ttfts += conversation(cluster.url, index, args.turns, args.paragraphs, args.new_tokens)
    return ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--paragraphs", type=int, default=14, help="about 60 tokens each")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--num-ctx", type=int, default=4096)
    args = parser.parse_args()
    results = {routing: run(routing, args) for routing in (True, False)}
    rows = [
        "| prefix routing | turns | TTFT p50 (s) | TTFT mean (s) | TTFT max (s) |",
        "|---|---|---|---|---|",
    ]
    for routing, ttfts in results.items():
        rows.append(
            f"| {'on' if routing else 'off'} | {len(ttfts)} | {statistics.median(ttfts):.3f} | "
            f"{statistics.fmean(ttfts):.3f} | {max(ttfts):.3f} |"
        )
    on, off = (statistics.median(results[r]) for r in (True, False))
    rows.append(f"\nTTFT p50 with routing: {on / off:.2f}x of without")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
