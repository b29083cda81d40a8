"""Where each Settings and Request field belongs, as data on the field itself.

A field's ``Annotated`` metadata holds one ``Group``: the ``--help`` panel it is shown in,
whether it decides which engine a process loads (a server matches ``zturbo generate`` by
those), and whether it is the per-request default of the Request field of the same name
(``make_request`` fills it from the settings). The lists the front ends need are read from
here, never kept by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

PANELS = ("Prompt", "Image", "Control", "Research knobs", "Model and weights", "Speed", "Cache",
          "Output", "Limits", "Server")  # --help panels, in the order they are shown


@dataclass(frozen=True)
class Group:
    """A field's place: its ``--help`` panel and what it decides."""

    panel: str
    engine: bool = False  # decides the engine a process loads (weights, numerics, caching)
    request: bool = False  # the default of the Request field of the same name
    measured: bool = False  # its "auto" may be decided at load from the GPU's free memory

    def __post_init__(self) -> None:
        if self.panel not in PANELS:
            raise ValueError(f"unknown panel {self.panel!r}: one of {', '.join(PANELS)}")


def group_of(model: type[BaseModel], name: str) -> Group | None:
    """The Group of ``model``'s field ``name`` (None: no such field, or none given)."""
    info = model.model_fields.get(name)
    if info is None:
        return None
    return next((m for m in info.metadata if isinstance(m, Group)), None)


def fields_where(model: type[BaseModel], *, engine: bool | None = None,
                 request: bool | None = None, measured: bool | None = None) -> tuple[str, ...]:
    """``model``'s fields whose Group says ``engine`` / ``request`` / ``measured``, in
    declaration order."""
    wanted = {"engine": engine, "request": request, "measured": measured}
    return tuple(name for name in model.model_fields
                 if (group := group_of(model, name)) is not None
                 and all(getattr(group, flag) == value for flag, value in wanted.items()
                         if value is not None))


@dataclass(frozen=True)
class Flag:
    """How a Request field is given on the command line (``zturbo generate --NAME``): its
    help, a short option, the option's type when a shell gives it otherwise than the field
    holds it (a comma list as text, a file for an image), an on/off switch. The default and
    the environment variable in ``--help`` come from the Settings field of the same name."""

    help: str
    short: str | None = None
    type: Any = None
    switch: bool = False

    def decls(self, name: str) -> tuple[str, ...]:
        """``("--name", "-s")``, or ``("--name/--no-name",)`` for a switch."""
        flag = "--" + name.replace("_", "-")
        if self.switch:
            flag += f"/--no-{name.replace('_', '-')}"
        return (flag,) + ((self.short,) if self.short else ())


def flag_of(model: type[BaseModel], name: str) -> Flag | None:
    """The Flag of ``model``'s field ``name`` (None: not a command-line option)."""
    info = model.model_fields.get(name)
    return None if info is None else next((m for m in info.metadata if isinstance(m, Flag)),
                                          None)
