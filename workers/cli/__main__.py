"""``python -m workers.cli``: the same as the ``transferbench`` console script."""

import sys

from workers.cli.main import main

sys.exit(main())
