"""Hypothesis strategies for lab sweeps that a server accepts: ``--vary`` axes (``FIELD=v1,v2``
over fields whose small values fit the fuzz server's limits: 2 steps, 64x64 pixels) and
whole ``POST /api/lab/sweeps`` bodies of at most a few frames. The fuzz run registers the
axis strategy for the ``sweep-axis`` string format of the schema, so schemathesis's valid
cases carry valid axes, and sends whole bodies on their own so the lab's accepting paths
are fuzzed too."""

from __future__ import annotations

from hypothesis import strategies as st

WORDS = st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=12).map(str.strip).filter(bool)
# field -> strategy of one value's text (values of one axis must differ)
VALUES = {
    "steps": st.sampled_from(["1", "2"]),
    "seed": st.integers(0, 2**32 - 1).map(str),
    "guidance": st.sampled_from(["0", "0.5", "1", "1.5", "4"]),
    "shift": st.sampled_from(["0.5", "1", "3", "7.25"]),
    "aspect": st.sampled_from(["1:1", "16:9", "9:16", "4:3", "3:4"]),
    "scale": st.sampled_from(["64x64", "48x32", "32x48", "16x16", "0.002", "0.004"]),
    "orientation": st.sampled_from(["landscape", "portrait"]),
    "negative_prompt": WORDS,
    "teleport": st.sampled_from(["true", "false"]),
}
SIZE_FIELDS = ("aspect", "scale", "orientation")


@st.composite
def vary_axis(draw, field: str | None = None, max_values: int = 3) -> str:
    """One ``FIELD=v1,v2`` text (or a ``seed=LOW..HIGH`` range) the lab parses."""
    field = field or draw(st.sampled_from(sorted(VALUES)))
    if field == "seed" and draw(st.booleans()):
        low = draw(st.integers(0, 1000))
        return f"seed={low}..{low + draw(st.integers(0, max_values - 1))}"
    values = draw(st.lists(VALUES[field], min_size=1, max_size=max_values, unique=True))
    spaced = draw(st.sampled_from([",", ", "]))
    return f"{field}={spaced.join(values)}"


@st.composite
def sweep_bodies(draw) -> dict:
    """A body the lab accepts: a prompt, one or two axes over distinct fields (at most one
    size axis), a few frames, sometimes fixed fields and a reference frame."""
    fields = draw(st.lists(st.sampled_from(sorted(VALUES)), min_size=1, max_size=2, unique=True)
                  .filter(lambda f: sum(x in SIZE_FIELDS for x in f) <= 1))
    vary = [draw(vary_axis(f, max_values=2)) for f in fields]
    body: dict = {"prompt": draw(WORDS), "vary": vary}
    fixed = {}
    if "steps" not in fields and draw(st.booleans()):
        fixed["steps"] = draw(st.integers(1, 2))
    if not set(fields) & set(SIZE_FIELDS) and draw(st.booleans()):
        fixed["width"] = fixed["height"] = draw(st.sampled_from([16, 32, 48, 64]))
    if fixed:
        body["fixed"] = fixed
    if draw(st.booleans()):
        first = vary[0]
        field, _, values = first.partition("=")
        value = values.split("..")[0].split(",")[0].strip()
        body["reference"] = f"{field}={value}"
    return body
