"""`python -m training.agent <command>` — the same entry point the zipapp's __main__ calls."""

import sys

from training.agent.cli import main

sys.exit(main(sys.argv[1:]))
