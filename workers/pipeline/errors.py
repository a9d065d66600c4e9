"""The one error type of the pipeline."""


class PipelineError(Exception):
    """A problem the user can act on: bad input, a model that cannot be loaded, a full disk.

    The message says what is wrong and what to do; the CLI prints it on one line and exits 2.
    """
