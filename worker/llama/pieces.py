"""How a prompt is cut into the pieces the batch scheduler reads, one per step."""

from __future__ import annotations

#: The fewest prompt tokens evaluated in one piece (but for a prompt shorter than this).
#: Measured on gemma3:270m: a prompt read in pieces of 8 tokens or more gives the same
#: logits to the bit as read whole; smaller pieces (a short tail after a cached prefix,
#: tokens fed one by one) do not. So an answer does not depend on how its prompt was split:
#: by what its slot had cached, or by the step budget.
MIN_PIECE = 8


def piece_size(remaining: int, budget: int) -> int:
    """How many of a sequence's ``remaining`` prompt tokens to evaluate this step: up to
    ``budget``, never a piece (nor a rest) shorter than ``MIN_PIECE``."""
    size = min(remaining, budget)
    if size < remaining and remaining - size < MIN_PIECE:
        size = remaining - MIN_PIECE  # leave a whole piece
        if size < MIN_PIECE:  # too short to split: all of it (a little over budget)
            size = remaining
    return max(size, min(remaining, MIN_PIECE))
