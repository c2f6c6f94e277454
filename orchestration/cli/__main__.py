"""``python -m orchestration.cli``: the ``orchestrate`` command."""

import sys

from orchestration.cli.main import main

sys.exit(main())
