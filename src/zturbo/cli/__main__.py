"""``python -m zturbo.cli``: the ``zturbo`` command."""

from zturbo.cli.entry import main

main()
