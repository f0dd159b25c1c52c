"""``python -m surgeflow``: the same as the ``surgeflow`` command."""

from surgeflow.cli import main

main()
