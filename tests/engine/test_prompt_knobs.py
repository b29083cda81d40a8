"""Templates, hidden layer, long prompts and the DiT text limit, on the demo model."""

import numpy as np
import pytest
import torch

from zturbo import ZTurboError
from zturbo.config import TEXT_TOKEN_LIMIT, load_settings, make_request
from zturbo.engine.long_prompts import encode_all, reduce
from zturbo.engine.prompt_templates import available, builtin, find
from zturbo.engine.steps import embed, text_token_limit
from zturbo.generation.orchestrator import embed_params, generate

from conftest import pixels, run_cli

LONG = "a red robot walking through the rain at night, neon signs, puddles, " * 6


def run(engine, **kw):
    fields = {"prompt": "a red robot", "seed": 42, "width": 64, "height": 64, "steps": 2, **kw}
    return generate(engine, make_request(engine.settings, **fields))


def test_at_least_30_shipped_templates_each_valid():
    shipped = builtin()
    assert len(shipped) >= 30
    assert {"photo", "portrait", "cinematic", "anime", "poster", "product-shot"} <= set(shipped)
    for t in shipped.values():
        assert "{prompt}" in t.body and t.description and t.apply("X") != t.body


def test_user_template_overrides_and_unknown_name_lists_close_matches(zturbo_home):
    folder = zturbo_home / "templates"
    folder.mkdir()
    (folder / "mine.toml").write_text('name = "portrait"\ndescription = "mine"\n'
                                      'body = "my {prompt} style"\n')
    settings, _ = load_settings()
    assert find("portrait", settings).body == "my {prompt} style"
    assert available(settings)["portrait"].source.endswith("mine.toml")
    with pytest.raises(ZTurboError, match="did you mean portrait"):
        find("portrat", settings)
    (folder / "bad.toml").write_text('name = "bad"\ndescription = "x"\nbody = "no placeholder"\n')
    with pytest.raises(ZTurboError, match=r"bad.toml: the body must contain \{prompt\}"):
        find("portrait", settings)


def test_template_body_enters_request_and_embedding(engine, zturbo_home):
    settings = engine.settings
    plain = make_request(settings, prompt="a cat", seed=1)
    photo = make_request(settings, prompt="a cat", seed=1, template="photo")
    assert photo.template_body == find("photo", settings).body
    assert embed_params(plain) != embed_params(photo)
    a = embed(engine, "a cat", template_body=photo.template_body).tensors[0]
    b = embed(engine, find("photo", settings).apply("a cat")).tensors[0]
    assert torch.equal(a, b)  # the template is the text the encoder sees
    # an edited user template of the same name changes the body, hence the embedding key
    (zturbo_home / "templates").mkdir()
    (zturbo_home / "templates" / "p.toml").write_text(
        'name = "photo"\ndescription = "edited"\nbody = "{prompt}, edited"\n')
    edited = make_request(load_settings()[0], prompt="a cat", seed=1, template="photo")
    assert edited.template == photo.template and embed_params(edited) != embed_params(photo)


def test_default_template_setting_and_explicit_none_survive_revalidation(monkeypatch):
    monkeypatch.setenv("ZTURBO_TEMPLATE", "anime")
    settings, _ = load_settings()
    assert make_request(settings, prompt="a cat").template == "anime"
    off = make_request(settings, prompt="a cat", template="none")
    assert off.template == "none" and off.template_body is None
    again = make_request(settings, **off.model_dump())  # what --from and engine.generate do
    assert again == off
    custom = make_request(settings, prompt="a cat", template_body="{prompt}, oil on canvas")
    assert custom.template == "custom" and make_request(settings, **custom.model_dump()) == custom


def test_hidden_layer_default_is_diffusers_and_others_change_pixels(engine):
    assert torch.equal(embed(engine, "a cat").tensors[0],
                       embed(engine, "a cat", hidden_layer=-2).tensors[0])
    a, b = run(engine), run(engine, hidden_layer=-1)
    assert not np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    with pytest.raises(ZTurboError, match="hidden_layer 5 is out of range"):
        run(engine, hidden_layer=5)


def test_long_prompt_modes_reach_the_limit_and_differ(engine):
    outs = {}
    for mode in ("truncate", "interpolate", "pool", "attention_pool"):
        emb = embed(engine, LONG, 32, long_prompt=mode)
        assert emb.tensors[0].shape == (32, 16) and emb.token_count > 100
        outs[mode] = emb.tensors[0]
    modes = list(outs)
    for i, m in enumerate(modes):
        for n in modes[i + 1:]:
            assert not torch.allclose(outs[m], outs[n]), (m, n)
    # a prompt within the limit is encoded the same way in every mode
    assert torch.equal(embed(engine, "a cat", 32, long_prompt="pool").tensors[0],
                       embed(engine, "a cat", 32).tensors[0])
    assert run(engine, prompt=LONG, max_sequence_length=32, long_prompt="pool").warnings == []


def test_reduce_and_chunked_encoding_shapes(engine):
    x = torch.arange(10.0)[:, None].repeat(1, 4)
    assert torch.equal(reduce(x, 4, "interpolate")[[0, -1], 0], torch.tensor([0.0, 9.0]))
    assert torch.allclose(reduce(x, 5, "pool")[:, 0], torch.tensor([0.5, 2.5, 4.5, 6.5, 8.5]))
    assert reduce(x, 3, "attention_pool").shape == (3, 4)
    ids = engine.pipe.tokenizer(LONG).input_ids
    whole = encode_all(engine.pipe.text_encoder, ids, -2, engine.device)
    windows = encode_all(engine.pipe.text_encoder, ids, -2, engine.device, window=64)
    assert whole.shape == windows.shape == (len(ids), 16)
    assert torch.allclose(whole[:64], windows[:64], atol=1e-5)  # first window is unchanged
    assert not torch.allclose(whole[64:], windows[64:])  # later windows lose earlier context


def test_text_token_limit_is_1504_and_checked(engine):
    assert text_token_limit(engine.pipe.transformer) == TEXT_TOKEN_LIMIT == 1504
    from zturbo.engine.steps import denoise, noise, sigmas

    denoise(engine, [torch.randn(1504, 16)], noise(1, 32, 32), sigmas(1))  # fits
    with pytest.raises(IndexError):  # what the limit protects against: one more token
        denoise(engine, [torch.randn(1505, 16)], noise(1, 32, 32), sigmas(1))
    with pytest.raises(ZTurboError, match="1504"):
        make_request(engine.settings, prompt="x", max_sequence_length=1505)


def test_templates_cli():
    out = run_cli("templates", "list")
    assert out.returncode == 0 and "portrait" in out.stdout and len(out.stdout.splitlines()) >= 30
    out = run_cli("templates", "show", "anime", "--prompt", "a fox")
    assert out.returncode == 0 and "An anime illustration of a fox." in out.stdout
    out = run_cli("templates", "show", "animee")
    assert out.returncode == 2 and "did you mean anime" in out.stderr
    out = run_cli("generate", "x", "--model", "demo", "--template", "nope-nope")
    assert out.returncode == 2 and "unknown template" in out.stderr
