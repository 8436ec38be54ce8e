"""Children that exit 1 at once: fork_processes must give up after max_restarts."""

import sys

from squall import fork_processes

fork_processes(2, max_restarts=int(sys.argv[1]))
sys.exit(1)
