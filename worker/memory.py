"""What loading a model takes in memory, from its GGUF header: weights, KV cache, compute
buffers and a margin, split between the GPU and the host.

The formulas follow what the vendored llama.cpp (llama-cpp-python 0.3.36) allocates: its
``model``, ``KV`` and ``compute``/``output`` buffers. The comparison with what it really
allocated for gemma3:270m and a tiny GGUF is in ``docs/architecture.md`` ("Memory
estimate"). No ``llama_cpp`` import: the engine-free worker code and the bench use this too.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from worker.gguf_header import SCALARS

F32 = 4
#: The KV cache's element size: f16 K and V, llama.cpp's default (``type_k``/``type_v``).
KV_F16 = 2
#: llama.cpp pads a context (and the SWA cache) to a multiple of this many cells.
CTX_PAD = 256
#: Headroom for what the formulas leave out (allocator rounding and fragmentation, small
#: buffers): a share of the host's part and of the GPU's (larger: measured on CPU only),
#: and a floor.
MARGIN_SHARE = 0.05
MARGIN_SHARE_GPU = 0.10
MARGIN_MIN = 8 << 20
#: Host memory of llama.cpp's vocabulary per token (token texts, maps, scores): 166 bytes
#: measured on gemma3's 262,144 tokens (its RSS with ``vocab_only``), rounded up.
VOCAB_BYTES_PER_TOKEN = 192

#: Layers that use the sliding window, when the GGUF has no ``sliding_window_pattern``:
#: llama.cpp's built-in pattern per architecture (every n-th layer attends to everything).
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4}

_BLOCK = re.compile(r"blk\.(\d+)\.")
#: Tensors of the input layer, which llama.cpp always keeps on the host.
_INPUT = ("token_embd.", "token_types.", "position_embd.")
#: The largest numeric array kept in full (per-layer values); longer ones only counted.
_KEEP_ARRAY = 4096


@dataclass(frozen=True)
class Layout:
    """What the estimate needs of a GGUF: its hyperparameters and each tensor's bytes."""

    #: Scalars, and numeric arrays up to ``_KEEP_ARRAY`` long (per-layer values) in full.
    metadata: Mapping[str, Any]
    #: Tensor name -> bytes of its data.
    tensors: Mapping[str, int]
    #: Tokens in the vocabulary (the length of ``tokenizer.ggml.tokens``).
    n_vocab: int


@dataclass(frozen=True)
class Plan:
    """The context a load creates (as ``worker.llama.model.Runtime`` sets it up)."""

    #: Cells per slot (each slot has a KV stream of its own: ``kv_unified`` off).
    n_ctx: int
    slots: int = 1
    n_batch: int = 512
    n_ubatch: int = 512
    #: Layers offloaded to the GPU; negative: all of them; 0: none (a CPU load).
    n_gpu_layers: int = 0
    flash_attn: bool = False
    #: Full-size KV cache for sliding-window layers (llama.cpp's default).
    swa_full: bool = True


@dataclass(frozen=True)
class Estimate:
    """Bytes a load takes, by kind, and how much of it is on the GPU."""

    weights: int
    kv: int
    #: The compute buffers (and the output buffer logits are copied to).
    compute: int
    #: The vocabulary's tables (host memory).
    vocab: int
    margin: int
    #: The part on the GPU (0 for a CPU load), its margin included.
    gpu: int = 0
    #: The GPU's weights, KV cache and compute buffer (no margin).
    gpu_parts: tuple[int, int, int] = (0, 0, 0)

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.vocab + self.margin

    @property
    def host(self) -> int:
        return self.total - self.gpu


# -- the model's shape ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    key_length: int
    value_length: int
    n_vocab: int
    #: Sliding-window size (0: none) and which layers use it.
    n_swa: int
    swa: tuple[bool, ...]
    causal: bool
    #: A model that pools embeddings (no logits over the vocabulary).
    pooled: bool


def _per_layer(value: Any, n_layer: int, default: int) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) == n_layer:
        return tuple(int(v) for v in value)
    if isinstance(value, list):  # shortened or odd: the largest is the safe guess
        value = max((int(v) for v in value), default=default)
    return (int(value) if isinstance(value, int | float) and value > 0 else default,) * n_layer


def _shape(layout: Layout) -> _Shape:
    meta = layout.metadata
    arch = str(meta.get("general.architecture", ""))

    def key(name: str, default: Any = 0) -> Any:
        return meta.get(f"{arch}.{name}", default)

    n_layer = int(key("block_count", 0) or 0)
    n_embd = int(key("embedding_length", 0) or 0)
    n_ff = max(_per_layer(key("feed_forward_length"), max(n_layer, 1), 0))
    heads = _per_layer(key("attention.head_count"), n_layer, 1)
    kv_heads = _per_layer(key("attention.head_count_kv"), n_layer, 0)
    kv_heads = tuple(kv or h for kv, h in zip(kv_heads, heads, strict=True))
    key_length = int(key("attention.key_length", 0) or n_embd // max(max(heads, default=1), 1))
    value_length = int(key("attention.value_length", 0) or key_length)
    n_swa = int(key("attention.sliding_window", 0) or 0)
    pattern = key("attention.sliding_window_pattern", None)
    if n_swa <= 0:
        swa = (False,) * n_layer
    elif isinstance(pattern, list) and len(pattern) == n_layer:
        swa = tuple(bool(p) for p in pattern)
    else:
        every = int(pattern) if isinstance(pattern, int) else SWA_PATTERNS.get(arch)
        # no known pattern: every layer full size, which never underestimates
        swa = tuple(
            every is not None and (every == 0 or il % every < every - 1) for il in range(n_layer)
        )
    vocab = int(key("vocab_size", 0) or layout.n_vocab)
    return _Shape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=heads,
        n_head_kv=kv_heads,
        key_length=key_length,
        value_length=value_length,
        n_vocab=vocab,
        n_swa=n_swa,
        swa=swa,
        causal=bool(key("attention.causal", True)),
        pooled=f"{arch}.pooling_type" in meta,
    )


def _pad(value: int, to: int) -> int:
    return -(-value // to) * to


# -- the estimate --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """The sizes llama.cpp derives from a plan (``llama_context``'s constructor)."""

    #: KV cells of each slot's stream.
    n_ctx_seq: int
    #: Tokens in the largest batch the graph is reserved for (``n_ubatch``).
    tokens: int
    #: Cells of a sliding-window layer's stream.
    swa_cells: int
    #: Which layers, and whether the output head, are on the GPU.
    on_gpu: tuple[bool, ...]
    head_on_gpu: bool


def _context(shape: _Shape, plan: Plan) -> _Context:
    slots = max(1, plan.slots)
    # the whole context is padded, then each slot's share of it padded again
    asked = plan.n_ctx * slots
    n_ctx_seq = _pad(max(1, _pad(asked, CTX_PAD) // slots), CTX_PAD)
    # a causal model's batch never exceeds the context asked for
    n_batch = min(asked, plan.n_batch) if shape.causal else plan.n_batch
    tokens = min(n_ctx_seq * slots, n_batch, plan.n_ubatch or n_batch)
    # the SWA cache holds the window and a batch, padded (unless swa_full)
    swa_cells = n_ctx_seq if plan.swa_full else min(n_ctx_seq, _pad(shape.n_swa + tokens, CTX_PAD))
    # llama.cpp offloads the last n_gpu_layers of [0, n_layer], where n_layer stands for
    # the output head: the head goes first
    n_layer = shape.n_layer
    offloaded = n_layer + 1 if plan.n_gpu_layers < 0 else min(plan.n_gpu_layers, n_layer + 1)
    first = n_layer + 1 - offloaded
    return _Context(
        n_ctx_seq=n_ctx_seq,
        tokens=tokens,
        swa_cells=swa_cells,
        on_gpu=tuple(il >= first for il in range(n_layer)),
        head_on_gpu=offloaded > 0,
    )


def _weights(layout: Layout, shape: _Shape, ctx: _Context) -> tuple[int, int]:
    """All the weights' bytes, and the GPU's share of them."""
    per_layer = [0] * shape.n_layer
    rest = 0
    for name, size in layout.tensors.items():
        block = _BLOCK.match(name)
        if block and int(block.group(1)) < shape.n_layer:
            per_layer[int(block.group(1))] += size
        elif not name.startswith(_INPUT):  # the head (and the odd global tensor)
            rest += size
    embeddings = sum(s for n, s in layout.tensors.items() if n.startswith(_INPUT))
    gpu = sum(s for s, g in zip(per_layer, ctx.on_gpu, strict=True) if g)
    total = sum(per_layer) + rest + embeddings
    if ctx.head_on_gpu:
        # the input embeddings stay on the host; a model without an output matrix reads
        # its logits through them, and llama.cpp copies them to the head's device for that
        tied = "output.weight" not in layout.tensors and not shape.pooled
        copy = layout.tensors.get("token_embd.weight", 0) if tied else 0
        gpu += rest + copy
        total += copy
    return total, gpu


def _kv(shape: _Shape, plan: Plan, ctx: _Context) -> tuple[int, int]:
    """The KV cache's bytes, and the GPU's share: a layer's cache is where the layer is.
    Each slot's stream holds n_ctx_seq cells (a sliding-window layer's may hold fewer) of
    K and V for each KV head. An encoder (not causal) keeps no cache."""
    if not shape.causal:
        return 0, 0
    total = gpu = 0
    for il in range(shape.n_layer):
        cells = ctx.swa_cells if shape.swa[il] else ctx.n_ctx_seq
        width = shape.n_head_kv[il] * (shape.key_length + shape.value_length)
        size = cells * max(1, plan.slots) * width * KV_F16
        total += size
        gpu += size if ctx.on_gpu[il] else 0
    return total, gpu


def _compute(shape: _Shape, plan: Plan, ctx: _Context) -> tuple[int, int]:
    """The compute buffers (and the output buffer), and the GPU's share.

    ggml's allocator reuses memory, so a compute buffer is the largest set of tensors
    alive together. In a layer: the attention scores (an f32 per head, cell and token of
    the batch; flash attention never builds them) or the feed-forward's activations, with
    the masks (one per kind of layer, read by every layer). After the last layer: logits
    for every token of the batch (llama.cpp reserves outputs for a whole batch), which is
    the larger for a big vocabulary. Measured: the masks' memory is not always free for
    the logits by then, so both count.
    """
    tokens, embd = ctx.tokens, shape.n_embd
    n_kv = ctx.n_ctx_seq if shape.causal else tokens
    heads = max(shape.n_head, default=1)
    cell = 2 if plan.flash_attn else F32
    masks = n_kv * tokens * cell
    if any(shape.swa) and shape.causal:
        masks += ctx.swa_cells * tokens * cell
    scores = 0 if plan.flash_attn else heads * n_kv * tokens * F32
    q_width = heads * max(shape.key_length, shape.value_length)
    attention = scores + tokens * F32 * 3 * (embd + q_width)
    feed_forward = tokens * F32 * (2 * embd + 3 * shape.n_ff)
    layer = masks + max(attention, feed_forward)
    logits = 0 if shape.pooled else shape.n_vocab * tokens * F32
    graph = max(layer, masks + logits + tokens * F32 * 2 * embd)
    # what logits (or embeddings) are copied to: a row per slot (a token each per step)
    output = (embd if shape.pooled else shape.n_vocab) * max(1, plan.slots) * F32
    if not ctx.head_on_gpu:
        return graph + output, 0
    # On a GPU the graph runs there; the host keeps the rows read from the embeddings
    # and, for layers left on the CPU, their activations. Not measured: no GPU here.
    host = tokens * F32 * 2 * embd + output + (0 if all(ctx.on_gpu) else layer)
    return graph + host, graph


def estimate(layout: Layout, plan: Plan) -> Estimate:
    """The memory loading ``layout``'s model with ``plan`` takes (see the module's doc)."""
    shape = _shape(layout)
    ctx = _context(shape, plan)
    weights, weights_gpu = _weights(layout, shape, ctx)
    kv, kv_gpu = _kv(shape, plan, ctx)
    compute, compute_gpu = _compute(shape, plan, ctx)
    # the tokenizer's tables, on the host whatever is offloaded
    vocab = shape.n_vocab * VOCAB_BYTES_PER_TOKEN
    gpu = weights_gpu + kv_gpu + compute_gpu
    host = weights + kv + compute + vocab - gpu
    margin_gpu = int(gpu * MARGIN_SHARE_GPU)
    margin_host = max(int(host * MARGIN_SHARE), MARGIN_MIN - margin_gpu)
    return Estimate(
        weights=weights,
        kv=kv,
        compute=compute,
        vocab=vocab,
        margin=margin_gpu + margin_host,
        gpu=gpu + margin_gpu,
        gpu_parts=(weights_gpu, kv_gpu, compute_gpu),
    )


# -- reading a GGUF's layout ---------------------------------------------------------------


def read_layout(path: Path) -> Layout:
    """The hyperparameters and tensor sizes of the GGUF at ``path`` (its header only).

    ``worker.gguf_header`` keeps neither the tensors' types nor the length of long arrays
    (the vocabulary); this pass keeps just what the estimate reads and skips the rest.
    """
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF" or struct.unpack_from("<I", data, 4)[0] not in (2, 3):
            raise ValueError(f"{path.name} is not a GGUF file (version 2 or 3)")
        reader = _Reader(data, 8)
        n_tensors, n_kv = reader.unpack("<Q"), reader.unpack("<Q")
        metadata: dict[str, Any] = {}
        n_vocab = 0
        for _ in range(n_kv):
            key = reader.string()
            kind = reader.unpack("<I")
            if kind == gguf.GGUFValueType.ARRAY and key == "tokenizer.ggml.tokens":
                n_vocab = struct.unpack_from("<Q", data, reader.pos + 4)[0]
            value = reader.value(kind)
            if value is not None:
                metadata[key] = value
        tensors: dict[str, int] = {}
        for _ in range(n_tensors):
            name = reader.string()
            dims = [reader.unpack("<Q") for _ in range(reader.unpack("<I"))]
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(reader.unpack("<I"))]
            reader.pos += 8  # the data's offset
            elements = 1
            for dim in dims:
                elements *= dim
            tensors[name] = elements // block * size
    return Layout(metadata=metadata, tensors=tensors, n_vocab=n_vocab)


class _Reader:
    def __init__(self, data: mmap.mmap, pos: int) -> None:
        self.data, self.pos = data, pos

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.unpack("<Q")
        self.pos += size
        return bytes(self.data[self.pos - size : self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        """A scalar or string; a short numeric array in full; None for what is skipped."""
        if kind == gguf.GGUFValueType.STRING:
            return self.string()
        if kind in SCALARS:
            return self.unpack(SCALARS[gguf.GGUFValueType(kind)])
        if kind != gguf.GGUFValueType.ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = self.unpack("<I"), self.unpack("<Q")
        if item in SCALARS:
            fmt = SCALARS[gguf.GGUFValueType(item)]
            start, self.pos = self.pos, self.pos + struct.calcsize(fmt) * count
            if count > _KEEP_ARRAY:
                return None
            return list(struct.unpack_from(f"<{count}{fmt[1]}", self.data, start))
        if item == gguf.GGUFValueType.STRING:  # the vocabulary and the like: skipped fast
            for _ in range(count):
                self.pos += 8 + struct.unpack_from("<Q", self.data, self.pos)[0]
            return None
        for _ in range(count):  # arrays of arrays
            self.value(item)
        return None
