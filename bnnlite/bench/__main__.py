"""``python -m bnnlite.bench``: the same command as ``bnnlite-bench`` (the workers start this way too)."""
from .cli import main

main()
