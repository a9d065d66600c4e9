"""transferbench's pipeline, job runners and command line. The layers, top to bottom (an
import-linter contract in pyproject.toml holds them):

- ``workers.cli``: the ``transferbench`` command;
- ``workers.jobs``: the job steps, the scheduler, the Celery and embedded runners;
- ``app``: the service: its domain (database, services, job lifecycle), its web side in
  ``app.web``;
- ``workers.pipeline``: models, datasets, extraction, the feature cache, ranking arrays;
- ``workers.settings``: the one settings object;
- ``scoring``: the metrics.

This file is the one place that sets process-wide environment the libraries read at import.
"""

import os

# Set before torch is imported. On a small shared CPU, OpenMP threads that spin while waiting
# made a 2-thread forward pass 3-10x slower whenever another process held a core; passive
# waiting costs nothing measurable when the machine is idle. Tokenizer fork-parallelism made
# MiniLM ~40x slower on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
