"""Control maps: each one deterministic, the image's size, in RGB; the Canny thresholds and
the tile factor change the map; a map made elsewhere passes through unchanged."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from zturbo.engine.control_maps import CONTROL_TABLE, CONTROL_TYPES, control_map

MADE = [name for name, entry in CONTROL_TABLE.items() if entry.make is not None]
PASSED = [name for name, entry in CONTROL_TABLE.items() if entry.make is None]


def params(kind: str, **over) -> SimpleNamespace:
    return SimpleNamespace(**{"control_type": kind, "canny_low": 100, "canny_high": 200,
                              "tile_factor": 4, **over})


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 40x24 picture (not a multiple of 16, not square) with edges of several strengths:
    a gradient, a bright disc, a dark line and a faint square, plus seeded noise."""
    y, x = np.mgrid[0:24, 0:40]
    gray = 40 + 3 * x + 0.0 * y
    gray[(x - 12) ** 2 + (y - 12) ** 2 < 36] = 230
    gray[:, 27] = 10
    gray[4:10, 31:37] += 25
    gray += np.random.default_rng(0).normal(0, 2, gray.shape)
    rgb = np.stack([gray, gray * 0.8, 255 - gray], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


@pytest.mark.parametrize("kind", CONTROL_TYPES)
def test_each_map_is_deterministic_keeps_the_size_and_is_rgb(photo, kind):
    first = control_map(photo, params(kind))
    again = control_map(photo.copy(), params(kind))
    assert first.size == photo.size and first.mode == "RGB"
    assert first.tobytes() == again.tobytes()


@pytest.mark.parametrize("kind", MADE)
def test_each_made_map_differs_from_the_image_and_is_not_blank(photo, kind):
    out = pixels(control_map(photo, params(kind)))
    assert not np.array_equal(out, pixels(photo))
    assert out.max() > out.min()


@pytest.mark.parametrize("kind", PASSED)
def test_a_map_made_elsewhere_passes_through_unchanged(photo, kind):
    assert pixels(control_map(photo, params(kind))).tolist() == pixels(photo).tolist()
    gray = photo.convert("L")
    assert pixels(control_map(gray, params(kind))).tolist() == \
        pixels(gray.convert("RGB")).tolist()


def test_edge_maps_are_gray_and_canny_edges_are_binary(photo):
    for kind in ("canny", "softedge", "lineart", "grayscale"):
        out = pixels(control_map(photo, params(kind)))
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert set(np.unique(pixels(control_map(photo, params("canny"))))) <= {0, 255}


def test_canny_thresholds_change_the_map(photo):
    def edges(low, high):
        return int((pixels(control_map(photo, params("canny", canny_low=low,
                                                       canny_high=high)))[..., 0] > 0).sum())

    assert edges(20, 40) > edges(50, 100) > edges(100, 200) > edges(600, 900) == 0
    assert edges(50, 100) != edges(50, 150)  # the high threshold alone matters too
    assert edges(100, 200) != edges(100, 600)


def test_tile_factor_changes_the_map(photo):
    maps = {f: pixels(control_map(photo, params("tile", tile_factor=f))) for f in (1, 2, 8)}
    assert not np.array_equal(maps[2], maps[8])
    assert maps[1].tolist() == pixels(photo).tolist()  # factor 1: nothing shrinks
    # a larger factor keeps less detail: smaller differences between neighbours
    def detail(a):
        return np.abs(np.diff(a.astype(int), axis=1)).mean()
    assert detail(maps[8]) < detail(maps[2]) < detail(maps[1])


def test_a_flat_image_gives_empty_edge_maps():
    flat = Image.new("RGB", (32, 16), (120, 30, 200))
    for kind in ("canny", "softedge", "lineart"):
        assert pixels(control_map(flat, params(kind))).max() == 0


def test_an_unknown_type_names_the_known_ones(photo):
    with pytest.raises(KeyError, match="canny, softedge"):
        control_map(photo, params("scribbles"))
