"""``discover``: the models of a store in Ollama's layout, beside loose GGUFs, and what
their layers and config make of their specs and adverts (as Ollama's /api/tags and
/api/show report them)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.messages import ChatMessage
from shared.settings import Settings
from shared.store import MediaType, Store
from tests.store_models import add_model
from tests.worker.test_llama_engine_tiny import write_tiny_llama
from worker import model_files
from worker.model_files import ModelSpec, StoreDetails, discover
from worker.modelinfo import describe
from worker.prompts.go_execute import GoTemplate

TEMPLATE = "{{ if .System }}[S]{{ .System }}{{ end }}{{ range .Messages }}[{{ .Role }}]{{ end }}"


@pytest.fixture
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_llama(path)
    return path


def settings(root: Path) -> Settings:
    return Settings(models_dir=root, serve_default_model=False)


def by_name(specs: list[ModelSpec]) -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in specs}


def test_store_models_are_served_with_their_layers(tmp_path: Path, gguf_file: Path) -> None:
    store = Store(tmp_path)
    plain = add_model(store, "plain", gguf_file)
    chatty = add_model(
        store,
        "hf.co/User/Chatty:Q8",
        gguf_file,
        template=TEMPLATE,
        system="Be brief.",
        params={"stop": ["<a>", "<b>"], "temperature": 0.5},
        licenses=("MIT", "Use policy"),
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        family="qwen2",
        parameter_size="494.03M",
        quantization="Q8_0",
    )
    (tmp_path / "loose.gguf").write_bytes(gguf_file.read_bytes())

    specs = by_name(discover(settings(tmp_path)))

    assert set(specs) == {"plain:latest", "hf.co/user/chatty:q8", "loose:latest"}
    spec = specs["hf.co/user/chatty:q8"]
    weights = chatty.manifest.layer(MediaType.MODEL)
    assert weights is not None and spec.path == store.blob_path(weights.digest)
    # Ollama's digest is the manifest file's, not the weights'
    assert spec.digest == hashlib.sha256(chatty.path.read_bytes()).hexdigest()
    assert spec.digest != weights.digest.removeprefix("sha256:")
    assert spec.parameters == {"stop": ["<a>", "<b>"], "temperature": [0.5]}
    assert spec.template == TEMPLATE
    assert spec.system == "Be brief."
    assert spec.licenses == ("MIT", "Use policy")
    assert spec.messages == (
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="yo"),
    )
    assert spec.details == StoreDetails("gguf", "qwen2", ["qwen2"], "494.03M", "Q8_0")
    assert spec.size == sum(layer.size for layer in chatty.manifest.blobs())
    assert spec.modified_at == datetime.fromtimestamp(chatty.path.stat().st_mtime, UTC)
    # no Modelfile layers: no template, system or parameters of its own
    bare = specs["plain:latest"]
    assert (bare.template, bare.system, bare.parameters) == (None, "", {})
    assert bare.digest == plain.digest
    assert specs["loose:latest"].details is None


def test_a_manifest_naming_a_missing_blob_is_skipped(tmp_path: Path, gguf_file: Path) -> None:
    store = Store(tmp_path)
    add_model(store, "whole", gguf_file)
    broken = add_model(store, "broken", gguf_file, system="gone")
    system = broken.manifest.layer(MediaType.SYSTEM)
    assert system is not None
    store.blob_path(system.digest).unlink()

    assert [spec.name for spec in discover(settings(tmp_path))] == ["whole:latest"]


def test_a_store_model_replaces_a_loose_file_of_its_name(tmp_path: Path, gguf_file: Path) -> None:
    (tmp_path / "same.gguf").write_bytes(gguf_file.read_bytes())
    stored = add_model(Store(tmp_path), "same", gguf_file, system="from the store")

    specs = discover(settings(tmp_path))

    assert [(s.name, s.digest, s.system) for s in specs] == [
        ("same:latest", stored.digest, "from the store")
    ]


def test_the_advert_says_what_the_store_says(tmp_path: Path, gguf_file: Path) -> None:
    stored = add_model(
        Store(tmp_path),
        "chatty",
        gguf_file,
        template=TEMPLATE,
        system="Be brief.",
        params={"temperature": 0.5},
        licenses=("MIT", "Use policy"),
        messages=[{"role": "user", "content": "hi"}],
        family="qwen2",
        parameter_size="494.03M",
        quantization="Q8_0",
    )
    (spec,) = discover(settings(tmp_path))

    desc = describe(spec)

    advert = desc.advert
    assert advert.digest == stored.digest
    assert advert.size_bytes == stored.size
    assert advert.modified_at == stored.modified_at.isoformat().replace("+00:00", "Z")
    assert (advert.format, advert.family, advert.families) == ("gguf", "qwen2", ["qwen2"])
    assert (advert.parameter_size, advert.quantization_level) == ("494.03M", "Q8_0")
    # the Modelfile's template replaces the GGUF's Jinja one, and brings no stops of its own
    assert isinstance(desc.template, GoTemplate) and advert.template == TEMPLATE
    assert advert.parameters == {"temperature": [0.5]}
    assert (advert.system, advert.license) == ("Be brief.", "MIT\nUse policy")
    assert advert.licenses == ["MIT", "Use policy"]
    assert advert.messages == [ChatMessage(role="user", content="hi")]
    # what the GGUF says beyond the details still counts
    assert advert.context_length == 512 and "completion" in advert.capabilities


def test_a_store_model_without_license_layers_shows_none(tmp_path: Path, gguf_file: Path) -> None:
    add_model(Store(tmp_path), "plain", gguf_file)
    (spec,) = discover(settings(tmp_path))

    advert = describe(spec).advert

    assert (advert.license, advert.licenses) == ("", [])


def test_a_loose_file_with_a_name_ollama_refuses_is_skipped(
    tmp_path: Path, gguf_file: Path
) -> None:
    """ "my model.gguf" would otherwise fail every rescan of the store."""
    (tmp_path / "my model.gguf").write_bytes(gguf_file.read_bytes())
    (tmp_path / "fine.gguf").write_bytes(gguf_file.read_bytes())
    add_model(Store(tmp_path), "stored", gguf_file)
    assert sorted(by_name(discover(settings(tmp_path)))) == ["fine:latest", "stored:latest"]


def test_a_huge_metadata_layer_skips_its_model(
    tmp_path: Path, gguf_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template (a system prompt, a license, …) is read whole: one too large for that,
    by its manifest or by its file, is not read at all."""
    monkeypatch.setattr(model_files, "MAX_METADATA_BYTES", 1000)
    store = Store(tmp_path)
    add_model(store, "small", gguf_file, system="short")
    add_model(store, "says", gguf_file, system="x" * 1001)
    lying = add_model(store, "lies", gguf_file, template="y" * 2000)
    template = lying.manifest.layer(MediaType.TEMPLATE)
    assert template is not None
    manifest = lying.manifest.model_copy(deep=True)
    manifest.layers[1].size = 10  # the manifest says small; the file is not
    store.write_manifest("lies", manifest)
    assert sorted(by_name(discover(settings(tmp_path)))) == ["small:latest"]
