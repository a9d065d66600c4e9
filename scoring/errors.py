"""The one error type the scoring library raises for bad input."""


class TransferabilityError(ValueError):
    """Input that a metric cannot score; the message says what is wrong and what to do."""


class ConvergenceWarning(UserWarning):
    """An iterative estimate stopped at its iteration cap before meeting its tolerance."""
