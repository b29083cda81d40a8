"""``python -m zturbo.cli``: the ``zturbo`` command."""

from zturbo.cli.root import main

main()
