"""The encode/generate split: safetensors embeddings and a generator-only engine."""

import uuid

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zturbo import ZTurboError, load
from zturbo.config import make_request
from zturbo.generation import embedfile
from zturbo.generation.orchestrator import generate

from conftest import pixels, run_cli


@pytest.fixture(scope="module")
def generator_only(engine):
    return load("demo", settings=engine.settings, text_encoder=False)


def test_generator_only_engine_never_loads_the_text_encoder(engine, generator_only):
    assert generator_only.pipe.text_encoder is None and generator_only.pipe.tokenizer is None
    assert not generator_only.has_text_encoder and engine.has_text_encoder
    assert generator_only.fingerprint == engine.fingerprint  # same weights, same pixels
    # a prompt no earlier test embedded: the session's disk tier (shared by both engines)
    # would otherwise serve its embedding, and nothing would need the text encoder
    never_embedded = f"a cat {uuid.uuid4().hex}"
    with pytest.raises(ZTurboError, match="without a text encoder"):
        generator_only.generate(never_embedded, seed=1, width=64, height=64, steps=1)


def test_embeddings_file_gives_the_full_engines_pixels(engine, generator_only, tmp_path):
    request = make_request(engine.settings, prompt="a red robot", template="cinematic",
                           hidden_layer=-1, negative_prompt="blurry")
    path = embedfile.save(embedfile.encode(engine, request), tmp_path / "emb.safetensors")
    file = embedfile.load(path)
    meta = file.metadata
    assert meta["encoder_fingerprint"] == engine.text_fingerprint
    assert (meta["template"], meta["hidden_layer"], meta["hidden_size"]) == ("cinematic", "-1", "16")
    assert int(meta["token_count"]) > 20 and set(file.tensors) == {"prompt", "negative"}
    kw = {"seed": 7, "width": 64, "height": 64, "steps": 2}
    full = engine.generate("a red robot", template="cinematic", hidden_layer=-1, **kw)
    split = generator_only.generate(embeddings=file, **kw)
    assert np.array_equal(pixels(full.images[0]), pixels(split.images[0]))
    assert split.request.embeddings_sha256 == file.sha256
    assert split.request.prompt == "a red robot" and split.request.template == "cinematic"
    # with guidance the stored negative embeddings are used, and equal the encoder's
    full = engine.generate("a red robot", template="cinematic", hidden_layer=-1,
                           negative_prompt="blurry", guidance=2.0, **kw)
    split = generator_only.generate(embeddings=file, guidance=2.0, **kw)
    assert np.array_equal(pixels(full.images[0]), pixels(split.images[0]))


def test_wrong_or_missing_embeddings_are_clear_errors(engine, generator_only, tmp_path):
    good = embedfile.encode(engine, make_request(engine.settings, prompt="x"))
    other = embedfile.EmbeddingFile({"prompt": torch.zeros(5, 32)}, good.metadata)
    with pytest.raises(ZTurboError, match="hidden size 32 but this model's DiT takes 16"):
        generator_only.generate(embeddings=other, seed=1, width=64, height=64, steps=1)
    request = make_request(engine.settings, prompt="x", embeddings_sha256=good.sha256)
    with pytest.raises(ZTurboError, match="give that embeddings file"):
        generate(generator_only, request)
    with pytest.raises(ZTurboError, match="needs negative embeddings"):
        generator_only.generate(embeddings=good, guidance=2.0, seed=1, width=64, height=64)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"prompt": torch.zeros(3, 16)}, foreign)
    with pytest.raises(ZTurboError, match="not a zturbo embeddings file"):
        embedfile.load(foreign)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ZTurboError, match="not a safetensors file"):
        embedfile.load(tmp_path / "junk.safetensors")


def test_encode_and_generate_cli(tmp_path):
    emb = tmp_path / "emb.safetensors"
    out = run_cli("encode", "a red robot", "-o", str(emb), "--model", "demo", "--template", "photo")
    assert out.returncode == 0 and emb.exists() and "tokens" in out.stdout
    png = tmp_path / "a.png"
    out = run_cli("generate", "--embeddings", str(emb), "--model", "demo", "-W", "64", "-H", "64",
                  "-s", "2", "--seed", "1", "-o", str(png))
    assert out.returncode == 0, out.stderr
    _ref = run_cli("generate", "a red robot", "--template", "photo", "--model", "demo", "-W", "64",
                  "-H", "64", "-s", "2", "--seed", "1", "-o", str(tmp_path / "b.png"))
    from PIL import Image
    assert np.array_equal(pixels(Image.open(png)), pixels(Image.open(tmp_path / "b.png")))
    out = run_cli("generate", "a cat", "--embeddings", str(emb), "--model", "demo")
    assert out.returncode == 2 and "not both" in out.stderr
    out = run_cli("generate", "--embeddings", str(tmp_path / "none.safetensors"), "--model", "demo")
    assert out.returncode == 2 and "cannot read embeddings" in out.stderr
