"""``python -m polyqueue``: the ``polyqueue`` command, for when its script is not on PATH."""

from .cli import main

main()
