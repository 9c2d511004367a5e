"""distill: distil long chain-of-thought from a teacher into small students."""

from distill._compat import block_broken_extras

__version__ = "0.1.0"

# Before anything imports transformers: see _compat.py for why.
block_broken_extras()
