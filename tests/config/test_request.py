import pytest

from zturbo.config import BUCKETS, Settings, bucket_size, make_request, nearest_multiples
from zturbo.errors import ZTurboError


def settings(**kw):
    return Settings(**kw)


def test_defaults_follow_the_model():
    r = make_request(settings(), prompt="a cat")
    assert (r.width, r.height, r.steps, r.guidance, r.shift, r.max_sequence_length) == (
        1024, 1024, 8, 0.0, 3.0, 512)
    assert r.seed is not None and 0 <= r.seed < 2**32  # random, but always resolved


def test_size_not_multiple_of_16_names_nearest_sizes():
    with pytest.raises(ZTurboError, match=r"width 1000 is not a multiple of 16.*992 or 1008"):
        make_request(settings(), prompt="x", width=1000)
    with pytest.raises(ZTurboError, match=r"height 250 .*240 or 256"):
        make_request(settings(), prompt="x", height=250)
    assert nearest_multiples(5) == (16, 32)


@pytest.mark.parametrize("fields, message", [
    ({"prompt": "   "}, "prompt is empty"),
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "steps": 101}, "steps"),
    ({"prompt": "x", "width": 4096, "height": 4112}, "limit"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "bogus": 1}, "bogus"),
])
def test_bad_input_is_one_clear_error(fields, message):
    with pytest.raises(ZTurboError, match=message):
        make_request(settings(), **fields)


def test_pixel_limit_is_a_setting():
    make_request(settings(), prompt="x", width=2048, height=2048)
    with pytest.raises(ZTurboError, match="limit is 1000000"):
        make_request(settings(max_pixels=1_000_000), prompt="x", width=2048, height=2048)


def test_prompt_length_limit():
    with pytest.raises(ZTurboError, match="limit is 10"):
        make_request(settings(max_prompt_chars=10), prompt="x" * 11)


def test_buckets_are_the_official_ones():
    assert bucket_size("16:9") == (1280, 720)
    assert bucket_size("21:9", 1536) == (2016, 864)
    assert bucket_size("3:4", 1280) == (1104, 1472)
    for sizes in BUCKETS.values():
        assert len(sizes) == 11
        assert all(w % 16 == 0 and h % 16 == 0 for w, h in sizes.values())
    with pytest.raises(ZTurboError, match="unknown aspect"):
        bucket_size("5:4")
    with pytest.raises(ZTurboError, match="unknown bucket"):
        bucket_size("1:1", 999)


def test_seeds_for_several_images():
    r = make_request(settings(), prompt="x", seed=10, num_images=3)
    assert r.seeds() == [10, 11, 12]
