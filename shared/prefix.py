"""A conversation's identity, for routing its next turn to the worker that holds it.

After a chat answer the API records ``digest(model, messages + [the answer])`` -> worker;
the next turn's messages, less the newest, hash to the same digest, and the job goes to that
worker, whose KV cache still holds the conversation's prompt. Only role and content count
(what clients echo back); a digest that matches nothing costs nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from shared.messages import ChatMessage


def digest(model: str, messages: Iterable[ChatMessage]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(model.encode())
    for message in messages:
        for part in (message.role, message.content):
            data = part.encode()
            h.update(len(data).to_bytes(8, "little"))  # no two splits hash alike
            h.update(data)
    return h.hexdigest()
