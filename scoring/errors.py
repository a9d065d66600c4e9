"""The error types the scoring library raises for input it cannot score."""


class TransferabilityError(ValueError):
    """Input that a metric cannot score; the message says what is wrong and what to do."""


class DegenerateScore(TransferabilityError):
    """A metric that would return a number, but one that says nothing about these features:
    its value is the same for any features of this shape (saturated at its bound, or fixed by
    the labels alone), so it must not rank models. The message names the regime and what
    would take the input out of it. A subclass of ``TransferabilityError``, so callers that
    report a metric that could not run report this one too."""


class MissingColumn(TransferabilityError):
    """A table has no column for a role it needs (``role``: "dataset", "model" or
    "outcome"; ``wanted``: the name asked for), so a caller can say which of its options
    names that column."""

    def __init__(self, message: str, *, role: str, wanted: str) -> None:
        super().__init__(message)
        self.role = role
        self.wanted = wanted


class ConvergenceWarning(UserWarning):
    """An iterative estimate stopped at its iteration cap before meeting its tolerance."""
