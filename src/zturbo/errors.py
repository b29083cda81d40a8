"""The one exception type every front end turns into a clear message (CLI: one line, exit 2)."""


class ZTurboError(Exception):
    """A problem the user can fix: bad input, a missing model, an unknown profile."""


class ModelUnavailable(ZTurboError):
    """The weights asked for cannot be had (offline, wrong path, missing file)."""


class NoControlNet(ZTurboError):
    """A controlled request for an engine loaded without a ControlNet (refused by the CLI
    before it loads one, and by the engine before any work)."""

    def __init__(self) -> None:
        super().__init__("this request has a control image but the engine has no "
                         "ControlNet: load one with --controlnet PATH (setting controlnet)")
