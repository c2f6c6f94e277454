"""``python -m tasks.demo``: run the demo (see :mod:`tasks.demo.run`)."""

import sys

from orchestration import default_orchestrator
from tasks.demo.run import main

if __name__ == "__main__":
    code = main()
    default_orchestrator().shutdown()
    sys.exit(code)
