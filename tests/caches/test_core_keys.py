"""Cache keys pinned across refactors: a moved function must not move a key.

A changed value here means every stored teleport latent, embedding and VAE latent would
silently miss (or, worse, be keyed differently for the same trajectory). The keys are
computed on the demo engine for one fixed request; the ``fixed`` engine stand-in pins the
key functions themselves, independent of the runtime fingerprint.
"""

from __future__ import annotations

from types import SimpleNamespace

from PIL import Image

from zturbo.caches.encoders import image_sha256
from zturbo.caches.keys import embedding_key, teleport_key, vae_latent_key
from zturbo.config import make_request
from zturbo.generation.orchestrator import embed_params, embed_request

FIXED = SimpleNamespace(fingerprint="fp-fixed", text_fingerprint="text-fixed",
                        vae_fingerprint="vae-fixed")
# the embedding digest of the request below on the demo text encoder (its float32 tensors)
EMBEDDING_DIGEST = "078c21138d4251660b185fb792b8756330a8e70e74be2ebfdcc04e46a85ad834"


def fixed_request(engine):
    return make_request(engine.settings, prompt="a red robot on a beach", seed=7, width=64,
                        height=64, steps=4)


def source():
    return Image.new("RGB", (64, 64), (200, 30, 40))


def test_embedding_digest_is_pinned(engine):
    text = embed_request(engine, fixed_request(engine))
    assert text.negative is None
    assert text.digest == EMBEDDING_DIGEST


def test_key_functions_are_pinned_for_a_fixed_fingerprint(engine):
    request = fixed_request(engine)
    assert teleport_key(FIXED, request.for_seed(7), EMBEDDING_DIGEST, 1, 7) == (
        "64343f5262528f002432138e53caf3105408e3ec4248beda0c8da4dec818046c")
    assert embedding_key(FIXED, embed_params(request)) == (
        "5f8f3f2d1756320af08e9149d4b4059bc43ebc271c823eefe3ce0abf467875d1")
    assert image_sha256(source()) == (
        "de0388c1e1e6aa97221cc756b72841b45ca7e74e230612af16c8621cbef2e98b")
    assert vae_latent_key(FIXED, image_sha256(source()), 64, 64) == (
        "cbf64f1e56e7ece6d0b2809b72e70ff114ca4363a48fe7442aa63fedf6032465")


# The runtime the full-engine keys were pinned on: the library versions, and the demo's
# weights identity as those versions built it (transformers writes its version into the
# text encoder's config.json). Stand-ins, as the numerics identity is: the test checks the
# key functions, not the day's releases.
PINNED_VERSIONS = {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "transformers": "5.24.0"}
PINNED_WEIGHTS = {
    "transformer": "19528809861771ed66a214a33592dc335efad45e55f8c0ba58c0c64e35312a56",
    "text_encoder": "30983771666bbcd7342dc646dfa4689d8eb6550dca5bb6f26c0f92518d61b2ee",
    "tokenizer": "2514bd2053389cf3c169db0e8ce82812559f42b235c4018243ceb0157e15924c",
    "vae": "fea0e4b4dd08c7acde54e8ace4ed400d4ba4684bf8ee4ca9ca7545e93743896d",
    "scheduler": "d06df2ed55105102fa9e2acb11789ab6636a16924e361400e95e249976640bcf",
}
PINNED_NUMERICS = {"threads": 1, "cpu_capability": "pinned"}


def pin_runtime(engine, monkeypatch) -> None:
    """The engine's runtime inputs to the fingerprint replaced by the pinned stand-ins."""
    monkeypatch.setattr("zturbo.generation.models.runtime_versions",
                        lambda: dict(PINNED_VERSIONS))
    monkeypatch.setattr("zturbo.generation.models.numerics_identity",
                        lambda placements: dict(PINNED_NUMERICS))
    monkeypatch.setattr(engine, "identity", dict(PINNED_WEIGHTS))


def test_full_engine_keys_are_pinned(engine, monkeypatch):
    # These include the demo engine's fingerprint (weights, dtype, device type, library
    # versions, numerics identity, extras). An INTENDED fingerprint change (a new field)
    # updates these values together with a schema note in docs/caching.md; a refactor never
    # may. What the day's installation and hardware decide (library versions, the demo's
    # files as they built it, the numerics identity: docs/scaleout.md) is pinned to the
    # stand-ins above, so the values depend neither on the releases installed nor on the
    # machine the tests run on.
    pin_runtime(engine, monkeypatch)
    request = fixed_request(engine)
    assert teleport_key(engine, request.for_seed(7), EMBEDDING_DIGEST, 1, 7) == (
        "559433ae93c07fe8d463ad4aa5c748a828b59910d5991b8678c1ee85bd7da476")
    assert embedding_key(engine, embed_params(request)) == (
        "d9c51b9eed4159001ffbdf84df3ce3d64668cb3b33d6a754bb1df0c9e27c127b")
    assert vae_latent_key(engine, image_sha256(source()), 64, 64) == (
        "303d77017d95b66391bd4075e398832ba925b3949bc53162617bb7722579769f")
