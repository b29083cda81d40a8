"""``python -m zturbo``: the ``zturbo`` command."""

from zturbo.cli.entry import main

main()
