"""How a ``transferbench`` command ends: its exit codes, and its one-line errors on stderr.

0: done. 1: a ranking ran, but a model in it (or the whole ranking) failed; the other models'
results are printed. 2: bad input, or the server refused the request.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2
#: a ranking ran, but a model in it (or the whole ranking) failed; its results are printed
EXIT_MODEL_FAILED = 1


def err(message: str) -> None:
    """One line on stderr, as every error of the command line reads."""
    print(f"transferbench: error: {message}", file=sys.stderr)
