"""Argument types the commands share: each refuses what would fail later, with the range."""

from __future__ import annotations

import argparse

#: The largest seed: numpy's legacy generators and the service take 32-bit seeds.
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """A seed: a whole number from 0 to ``MAX_SEED``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is from 0 to {MAX_SEED}, not {value}")
    return value


def port(text: str) -> int:
    """A TCP port: 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 0 to 65535, not {value}")
    return value
