"""The echo demo: uringserve.echo's server, run from a checkout.

    python apps/echo.py --host 127.0.0.1 --port 8000 [--loop uring|asyncio|uvloop]
    python apps/echo.py --uds /tmp/echo.sock [--uds-mode 660]  |  --fd 3

The protocol and the server are in the package (`uringserve echo` serves
the same from an installed wheel); the benchmarks run this file, and
`uringserve run apps.echo:Echo --protocol` serves the protocol by name.
"""

from __future__ import annotations

import sys

from uringserve.echo import Echo, main

__all__ = ["Echo", "main"]

if __name__ == "__main__":
    sys.exit(main())
