"""The ``transferbench`` command line: the top layer. It drives the pipeline directly
(``rank``, ``models``) and starts the service's processes (``serve``, ``worker``, ``beat``)."""

from workers.cli.main import main

__all__ = ["main"]
