"""Every prompt-side and transformer knob changes what the caches key on.

The teleport key (``zturbo.caches.keys.teleport_key``) digests the Request, the embedding
key digests ``embed_params(request)`` (what the text encoder is given). Embeddings from a
file skip the encoder: their content enters the teleport key through the Request's
``embeddings_sha256`` and the embedding digest.
"""

import pytest

from zturbo.caches.keys import teleport_key
from zturbo.config import make_request
from zturbo.generation.orchestrator import embed_params

BASE = {"prompt": "a cat", "seed": 1}
# knob -> (fields that turn it on / change it, does it decide the embedding?)
KNOBS = {
    "template": ({"template": "photo"}, True),
    "hidden_layer": ({"hidden_layer": -3}, True),
    "long_prompt": ({"long_prompt": "pool"}, True),
    "max_sequence_length": ({"max_sequence_length": 256}, True),
    "embeddings": ({"embeddings_sha256": "ab" * 32}, False),
    "dype": ({"dype": "vision_yarn"}, False),
    "dype_scale": ({"dype": "yarn", "dype_scale": 3.0}, False),
    "dype_exponent": ({"dype": "yarn", "dype_exponent": 1.0}, False),
    "dype_base": ({"dype": "yarn", "dype_base": 768}, False),
    "slg_scale": ({"slg_scale": 2.0}, False),
    "slg_layers": ({"slg_scale": 2.0, "slg_layers": [1, 2]}, False),
    "slg_start": ({"slg_scale": 2.0, "slg_start": 0.1}, False),
    "slg_stop": ({"slg_scale": 2.0, "slg_stop": 0.5}, False),
}


def key(engine, request):
    """The teleport key of step 7, seed 1, for a fixed embedding digest."""
    return teleport_key(engine, request, "0" * 64, 7, 1)


@pytest.mark.parametrize("knob", list(KNOBS))
def test_knob_changes_the_teleport_and_embedding_keys(engine, knob):
    changed, in_embedding = KNOBS[knob]
    base = make_request(engine.settings, **BASE)
    other = make_request(engine.settings, **BASE, **changed)
    assert key(engine, base) != key(engine, other)
    assert (embed_params(base) != embed_params(other)) is in_embedding


def test_parameters_of_a_variant_change_the_key_against_the_variant(engine):
    s = engine.settings
    for variant, extra in (({"dype": "yarn"}, {"dype_scale": 3.0}),
                           ({"slg_scale": 2.0}, {"slg_layers": [0]})):
        assert key(engine, make_request(s, **BASE, **variant)) != key(
            engine, make_request(s, **BASE, **variant, **extra))


def test_template_name_alone_is_not_enough_the_body_decides(engine):
    s = engine.settings
    a = make_request(s, **BASE, template="photo")
    b = make_request(s, **BASE, template="photo", template_body="{prompt}, edited")
    assert embed_params(a) != embed_params(b) and key(engine, a) != key(engine, b)
