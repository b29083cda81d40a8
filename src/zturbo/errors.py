"""The one exception type every front end turns into a clear message (CLI: one line, exit 2)."""


class ZTurboError(Exception):
    """A problem the user can fix: bad input, a missing model, an unknown profile."""


class ModelUnavailable(ZTurboError):
    """The weights asked for cannot be had (offline, wrong path, missing file)."""
