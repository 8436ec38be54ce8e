"""fork_processes under a running loop (argv[1] == 'loop') or beside a thread ('thread')."""

import asyncio
import sys
import threading
import warnings

from squall import fork_processes

if sys.argv[1] == "loop":

    async def main():
        fork_processes(2)

    try:
        asyncio.run(main())
    except RuntimeError as exc:
        print(f"refused: {exc}")
        sys.exit(0)
    sys.exit(1)
else:
    stop = threading.Event()
    threading.Thread(target=stop.wait, name="lingering", daemon=True).start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from squall.process import check_fork_safety

        check_fork_safety()
    stop.set()
    print("warned: " + "; ".join(str(w.message) for w in caught))
