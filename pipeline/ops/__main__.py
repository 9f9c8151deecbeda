"""``python -m pipeline.ops``: the ``feedstream`` command without its console script."""

from pipeline.ops.cli import main

main()
