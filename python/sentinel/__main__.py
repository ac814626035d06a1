"""``python -m sentinel``: the same as the ``sentinel`` command."""

from .cli import console

console()
