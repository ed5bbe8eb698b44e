"""The memory estimate (``worker.memory``): its formulas on made-up models, then against
what llama.cpp really allocates (the buffer sizes it logs while loading) for tiny
random-weight GGUFs made here and, ``e2e``, for gemma3:270m."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest
from llama_cpp import _logger

from shared.messages import LoadOptions
from tests.worker.test_llama_engine_tiny import vocabulary
from worker.llama.engine import LlamaEngine
from worker.memory import MARGIN_MIN, Layout, Plan, estimate, read_layout
from worker.model_files import DEFAULT_MODEL, ModelSpec, default_model

MiB = 1 << 20


# -- made-up models --------------------------------------------------------------------------


def layout(
    *,
    arch: str = "llama",
    layers: int = 4,
    width: int = 256,
    heads: int = 8,
    kv_heads: int | list[int] = 2,
    head_dim: int = 32,
    ff: int = 1024,
    vocab: int = 32000,
    tied: bool = False,
    **metadata: Any,
) -> Layout:
    """A model's layout as ``read_layout`` gives it: f16 weights of the usual shapes."""
    meta: dict[str, Any] = {
        "general.architecture": arch,
        f"{arch}.block_count": layers,
        f"{arch}.embedding_length": width,
        f"{arch}.feed_forward_length": ff,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.attention.key_length": head_dim,
        f"{arch}.attention.value_length": head_dim,
    }
    meta.update({f"{arch}.{k.replace('__', '.')}": v for k, v in metadata.items()})
    kv_list = kv_heads if isinstance(kv_heads, list) else [kv_heads] * layers
    tensors = {"token_embd.weight": vocab * width * 2, "output_norm.weight": width * 4}
    if not tied:
        tensors["output.weight"] = vocab * width * 2
    for il in range(layers):
        q, kv = heads * head_dim, kv_list[il] * head_dim
        tensors[f"blk.{il}.attn_q.weight"] = width * q * 2
        tensors[f"blk.{il}.attn_k.weight"] = width * kv * 2
        tensors[f"blk.{il}.attn_v.weight"] = width * kv * 2
        tensors[f"blk.{il}.attn_output.weight"] = q * width * 2
        tensors[f"blk.{il}.ffn_up.weight"] = width * ff * 2
        tensors[f"blk.{il}.ffn_down.weight"] = ff * width * 2
    return Layout(metadata=meta, tensors=tensors, n_vocab=vocab)


def kv_bytes(cells: int, slots: int, kv_heads: int, head_dim: int, layers: int) -> int:
    return layers * cells * slots * kv_heads * 2 * head_dim * 2  # K and V, f16


def test_the_kv_cache_grows_with_context_times_slots() -> None:
    model = layout()
    one = estimate(model, Plan(n_ctx=2048)).kv
    assert one == kv_bytes(2048, 1, 2, 32, 4)
    assert estimate(model, Plan(n_ctx=8192)).kv == 4 * one
    assert estimate(model, Plan(n_ctx=2048, slots=4)).kv == 4 * one
    assert estimate(model, Plan(n_ctx=4096, slots=4)).kv == 8 * one
    # llama.cpp pads each slot's cells to a multiple of 256
    assert estimate(model, Plan(n_ctx=2000)).kv == one


def test_per_layer_kv_heads_count_layer_by_layer() -> None:
    model = layout(layers=4, kv_heads=[1, 2, 4, 8])
    expected = sum(kv_bytes(1024, 1, h, 32, 1) for h in (1, 2, 4, 8))
    assert estimate(model, Plan(n_ctx=1024)).kv == expected


def test_sliding_window_layers_hold_the_window_unless_swa_full() -> None:
    gemma = layout(
        arch="gemma3", layers=12, kv_heads=1, head_dim=256, attention__sliding_window=512
    )
    full = estimate(gemma, Plan(n_ctx=8192, n_batch=512, n_ubatch=512))
    assert full.kv == kv_bytes(8192, 1, 1, 256, 12)  # llama.cpp's default: full size
    window = estimate(gemma, Plan(n_ctx=8192, n_batch=512, n_ubatch=512, swa_full=False))
    # gemma3: every 6th layer attends to everything; the others to 512 + a batch of 512
    assert window.kv == kv_bytes(8192, 1, 1, 256, 2) + kv_bytes(1024, 1, 1, 256, 10)
    assert window.compute < full.compute  # a smaller mask too
    # a window wider than the context: the context
    small = estimate(gemma, Plan(n_ctx=512, n_batch=512, n_ubatch=512, swa_full=False))
    assert small.kv == kv_bytes(512, 1, 1, 256, 12)


def test_a_sliding_window_pattern_in_the_file_wins_and_an_unknown_one_is_full_size() -> None:
    plan = Plan(n_ctx=8192, n_batch=512, n_ubatch=512, swa_full=False)
    listed = layout(
        arch="gemma3",
        layers=4,
        kv_heads=1,
        attention__sliding_window=256,
        attention__sliding_window_pattern=[True, False, False, False],
    )
    assert estimate(listed, plan).kv == kv_bytes(8192, 1, 1, 32, 3) + kv_bytes(768, 1, 1, 32, 1)
    unknown = layout(arch="somearch", layers=4, kv_heads=1, attention__sliding_window=256)
    assert estimate(unknown, plan).kv == kv_bytes(8192, 1, 1, 32, 4)


def test_an_encoder_keeps_no_kv_cache_and_computes_no_logits() -> None:
    bert = layout(arch="bert", attention__causal=False, pooling_type=1)
    plan = Plan(n_ctx=512, n_batch=512, n_ubatch=512)
    assert estimate(bert, plan).kv == 0
    decoder = estimate(layout(), plan)
    assert estimate(bert, plan).compute < decoder.compute


def test_logits_for_a_whole_batch_dominate_a_big_vocabulary() -> None:
    small, big = layout(vocab=1000), layout(vocab=256000)
    plan = Plan(n_ctx=2048, n_batch=512, n_ubatch=512)
    assert estimate(big, plan).compute >= 256000 * 512 * 4  # an f32 logit a token
    assert estimate(small, plan).compute < estimate(big, plan).compute / 10
    half = estimate(big, replace(plan, n_batch=256, n_ubatch=256)).compute
    assert half < estimate(big, plan).compute * 0.6


def test_flash_attention_never_builds_the_scores() -> None:
    model = layout(vocab=1000)
    plan = Plan(n_ctx=32768, n_batch=512, n_ubatch=512, n_gpu_layers=-1)
    plain = estimate(model, plan).compute
    assert estimate(model, replace(plan, flash_attn=True)).compute < plain / 4


def test_a_cpu_load_is_all_host_memory() -> None:
    need = estimate(layout(), Plan(n_ctx=4096))
    assert need.gpu == 0 and need.host == need.total
    assert need.total == need.weights + need.kv + need.compute + need.vocab + need.margin
    assert need.margin >= MARGIN_MIN


def test_offloading_moves_layers_then_their_cache_to_the_gpu() -> None:
    model = layout(layers=8)
    plan = Plan(n_ctx=4096, n_batch=512, n_ubatch=512, flash_attn=True)
    splits = [estimate(model, replace(plan, n_gpu_layers=n)) for n in range(0, 10)]
    gpu = [s.gpu for s in splits]
    assert gpu[0] == 0
    assert gpu == sorted(gpu) and len(set(gpu[1:])) == len(gpu) - 1
    embeddings = model.tensors["token_embd.weight"]
    everything = estimate(model, replace(plan, n_gpu_layers=-1))
    assert everything.gpu == splits[9].gpu  # -1: the 8 layers and the head
    weights_gpu, kv_gpu, _ = everything.gpu_parts
    assert weights_gpu == everything.weights - embeddings  # the input layer stays home
    assert kv_gpu == everything.kv
    # one layer offloaded: the head alone (llama.cpp offloads it first), and no cache
    head = splits[1].gpu_parts
    assert head[0] == model.tensors["output.weight"] + model.tensors["output_norm.weight"]
    assert head[1] == 0
    half = splits[5].gpu_parts  # the head and the last 4 layers
    assert half[1] == everything.kv // 2
    for split in splits:
        assert 0 <= split.gpu <= split.total


def test_tied_embeddings_are_copied_to_a_gpu_head() -> None:
    tied = layout(tied=True)
    cpu = estimate(tied, Plan(n_ctx=2048))
    gpu = estimate(tied, Plan(n_ctx=2048, n_gpu_layers=-1))
    assert gpu.weights - cpu.weights == tied.tensors["token_embd.weight"]
    assert gpu.gpu_parts[0] == gpu.weights - tied.tensors["token_embd.weight"]


# -- tiny GGUFs against llama.cpp -----------------------------------------------------------------


def write_model(
    path: Path,
    *,
    arch: str = "llama",
    layers: int = 3,
    width: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    ff: int = 256,
    window: int = 0,
    extra_tokens: int = 0,
) -> None:
    """A random-weight f32 model (llama, or gemma3 with a sliding window and its output
    read through the embeddings) on the tiny SPM vocabulary, ``extra_tokens`` longer."""
    rng = np.random.default_rng(0)
    vocab = vocabulary() + [(f"w{i}", gguf.TokenType.NORMAL) for i in range(extra_tokens)]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(8192)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    if window:
        writer.add_sliding_window(window)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_scores([-float(i) for i in range(len(vocab))])
    writer.add_token_types([int(k) for _, k in vocab])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    def ones(name: str, size: int) -> None:
        writer.add_tensor(name, np.ones(size, np.float32))

    tensor("token_embd.weight", len(vocab), width)
    for il in range(layers):
        ones(f"blk.{il}.attn_norm.weight", width)
        tensor(f"blk.{il}.attn_q.weight", heads * head_dim, width)
        tensor(f"blk.{il}.attn_k.weight", kv_heads * head_dim, width)
        tensor(f"blk.{il}.attn_v.weight", kv_heads * head_dim, width)
        tensor(f"blk.{il}.attn_output.weight", width, heads * head_dim)
        ones(f"blk.{il}.ffn_norm.weight", width)
        tensor(f"blk.{il}.ffn_gate.weight", ff, width)
        tensor(f"blk.{il}.ffn_up.weight", ff, width)
        tensor(f"blk.{il}.ffn_down.weight", width, ff)
        if arch == "gemma3":
            ones(f"blk.{il}.post_attention_norm.weight", width)
            ones(f"blk.{il}.post_ffw_norm.weight", width)
            ones(f"blk.{il}.attn_q_norm.weight", head_dim)
            ones(f"blk.{il}.attn_k_norm.weight", head_dim)
    ones("output_norm.weight", width)
    if arch != "gemma3":
        tensor("output.weight", len(vocab), width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_read_layout_reads_sizes_shapes_and_the_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_model(path, layers=2, extra_tokens=100)
    read = read_layout(path)
    assert read.n_vocab == len(vocabulary()) + 100
    assert read.metadata["general.architecture"] == "llama"
    assert read.metadata["llama.block_count"] == 2
    assert read.tensors["blk.1.ffn_up.weight"] == 256 * 64 * 4
    # every byte of tensor data is some tensor's (f32 sizes are multiples of the alignment)
    reader = gguf.GGUFReader(path)
    assert sum(read.tensors.values()) == sum(int(t.n_bytes) for t in reader.tensors)
    assert "tokenizer.ggml.tokens" not in read.metadata  # skipped, only counted


class BufferLog:
    """The buffer sizes llama.cpp logs while it loads (its log level INFO)."""

    PATTERNS = {
        "weights": re.compile(r"model buffer size =\s+([\d.]+) MiB"),
        "kv": re.compile(r"KV buffer size =\s+([\d.]+) MiB"),
        "compute": re.compile(r"(?:compute|output) buffer size =\s+([\d.]+) MiB"),
    }

    def __init__(self) -> None:
        self.lines: list[str] = []

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            self.lines.append(text.decode("utf-8", errors="replace"))

        self._callback = collect

    def __enter__(self) -> BufferLog:
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def sizes(self) -> dict[str, float]:
        """Bytes by kind (logged in MiB with two decimals)."""
        text = "".join(self.lines)
        return {
            kind: sum(float(v) for v in pattern.findall(text)) * MiB
            for kind, pattern in self.PATTERNS.items()
        }


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ModelSpec]]:
    folder = tmp_path_factory.mktemp("memory")
    write_model(folder / "llama.gguf", layers=4, width=128, heads=8, kv_heads=2, ff=512)
    write_model(
        folder / "swa.gguf",
        arch="gemma3",
        layers=7,
        heads=4,
        kv_heads=1,
        head_dim=64,
        window=128,
        extra_tokens=5000,
    )
    yield [
        ModelSpec(name="llama:latest", path=folder / "llama.gguf"),
        ModelSpec(name="swa:latest", path=folder / "swa.gguf"),
    ]


async def loaded_sizes(
    spec: ModelSpec, n_ctx: int, slots: int, n_batch: int
) -> tuple[dict[str, float], LlamaEngine, LoadOptions]:
    """Load ``spec`` through LlamaEngine and collect the buffers llama.cpp allocated."""
    engine = LlamaEngine([spec], n_ctx=n_ctx, n_gpu_layers=0, num_parallel=slots)
    options = LoadOptions(num_ctx=n_ctx, num_batch=n_batch)
    with BufferLog() as log:
        await engine.load(spec.name, options)
    return log.sizes(), engine, options


@pytest.mark.parametrize(
    ("n_ctx", "slots", "n_batch"),
    [(512, 1, 512), (2048, 1, 512), (2048, 4, 512), (1000, 3, 300), (4096, 2, 1024)],
)
async def test_the_estimate_covers_what_llama_cpp_allocates_for_tiny_models(
    tiny_models: list[ModelSpec], n_ctx: int, slots: int, n_batch: int
) -> None:
    for spec in tiny_models:
        real, engine, options = await loaded_sizes(spec, n_ctx, slots, n_batch)
        try:
            need = engine.memory_estimate(spec.name, options)
            # the parts: weights and cache exactly (to the log's rounding), compute closely
            assert need.weights == pytest.approx(real["weights"], abs=0.01 * MiB)
            assert need.kv == pytest.approx(real["kv"], abs=0.01 * MiB)
            assert need.compute == pytest.approx(real["compute"], rel=0.15)
            allocated = sum(real.values())
            assert allocated <= need.total - need.vocab <= allocated * 1.25 + MARGIN_MIN
            # what the worker is told: all of it is host memory, as /api/ps shows
            assert engine.memory_required(spec.name, options) == need.total
            (loaded,) = engine.loaded()
            assert (loaded.size_bytes, loaded.size_vram) == (need.total, 0)
        finally:
            await engine.close()


async def test_the_advert_carries_the_default_loads_estimate(
    tiny_models: list[ModelSpec],
) -> None:
    engine = LlamaEngine(tiny_models, n_ctx=2048, n_gpu_layers=0, num_parallel=2)
    adverts = {m.name: m.memory_bytes for m in engine.models()}
    for spec in tiny_models:
        assert adverts[spec.name] == engine.memory_required(spec.name, LoadOptions())
        bigger = engine.memory_required(spec.name, LoadOptions(num_ctx=8192))
        assert bigger > adverts[spec.name] > spec.path.stat().st_size


# -- gemma3:270m ----------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("n_ctx", "slots"), [(2048, 1), (4096, 1), (8192, 1), (2048, 4), (4096, 4), (8192, 4)]
)
async def test_the_estimate_covers_what_llama_cpp_allocates_for_gemma(
    n_ctx: int, slots: int
) -> None:
    spec = default_model()
    real, engine, options = await loaded_sizes(spec, n_ctx, slots, 512)
    try:
        need = engine.memory_estimate(DEFAULT_MODEL, options)
        allocated = sum(real.values())
        assert allocated <= need.total - need.vocab <= allocated * 1.25
        assert need.kv == pytest.approx(real["kv"], abs=0.01 * MiB)
    finally:
        await engine.close()
