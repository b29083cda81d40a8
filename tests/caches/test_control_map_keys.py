"""The control-map preprocessor parameters reach the teleport key when their control type is
picked (a change is a miss), leave it for the other types (they cannot split a key), and
need a control image."""

from typing import get_args

import pytest

from zturbo.caches.keys import teleport_key
from zturbo.config import make_request
from zturbo.config.request import ControlType
from zturbo.engine.control_maps import CONTROL_TABLE, CONTROL_TYPES
from zturbo.errors import ZTurboError

C = "c0" * 32  # a control image's sha256
BASE = {"prompt": "a red robot", "seed": 1, "width": 64, "height": 64, "control_image": C}
PARAMS = {  # each preprocessor parameter: its control type and a value off its default
    "canny_low": ("canny", 50), "canny_high": ("canny", 300), "tile_factor": ("tile", 8),
}


def key(engine, **fields) -> str:
    return teleport_key(engine, make_request(engine.settings, **{**BASE, **fields}), "e" * 64, 3, 1)


def test_the_request_types_are_the_tables():
    assert get_args(ControlType) == CONTROL_TYPES
    assert {n for e in CONTROL_TABLE.values() for n in e.params} == set(PARAMS)


@pytest.mark.parametrize("name", PARAMS)
def test_a_preprocessor_parameter_of_the_picked_type_changes_the_key(engine, name):
    kind, value = PARAMS[name]
    base = key(engine, control_type=kind)
    assert key(engine, control_type=kind, **{name: value}) != base
    others = {key(engine, control_type=kind, **{n: v}) for n, (k, v) in PARAMS.items()
              if k == kind and n != name}
    assert key(engine, control_type=kind, **{name: value}) not in others


@pytest.mark.parametrize("name", PARAMS)
def test_another_types_parameter_does_not_split_the_key(engine, name):
    kind, value = PARAMS[name]
    other = next(t for t in CONTROL_TYPES if t != kind)
    request = make_request(engine.settings, **BASE, control_type=other, **{name: value})
    assert getattr(request, name) == type(request).model_fields[name].default
    assert key(engine, control_type=other, **{name: value}) == key(engine, control_type=other)


def test_the_control_type_and_image_change_the_key(engine):
    keys = {key(engine, control_type=t) for t in CONTROL_TYPES}
    assert len(keys) == len(CONTROL_TYPES)
    assert key(engine, control_image="c1" * 32) != key(engine)


@pytest.mark.parametrize("name", PARAMS)
def test_a_preprocessor_parameter_needs_a_control_image(engine, name):
    fields = {k: v for k, v in BASE.items() if k != "control_image"}
    with pytest.raises(ZTurboError, match=f"{name} needs a control image"):
        make_request(engine.settings, **fields, **{name: PARAMS[name][1]})
    # at its default (a dumped Request re-run with --from) it is no error
    make_request(engine.settings, **fields, **{name: type(make_request(
        engine.settings, **fields)).model_fields[name].default})


def test_canny_thresholds_in_order_and_in_range(engine):
    with pytest.raises(ZTurboError, match="canny_low 250 must not be above canny_high 200"):
        make_request(engine.settings, **BASE, control_type="canny", canny_low=250)
    for bad in ({"canny_high": 1001}, {"canny_low": -1}, {"canny_low": 10.5},
                {"tile_factor": 0}, {"tile_factor": 33}):
        with pytest.raises(ZTurboError):
            make_request(engine.settings, **BASE,
                         control_type="tile" if "tile_factor" in bad else "canny", **bad)
