"""SIGHUP in a single process serving TLS (no --workers): the certificate
and key files are read again (CoreTLS.reload) for the connections accepted
from then on; open connections keep theirs and are not disturbed.

With --workers the supervisor's rolling reload does this by starting new
workers (workers.py); a single process has nobody to start it, so it reloads
its TLS configuration in place. The app is not imported again (that needs
--workers or --reload). A file that does not load is one log line and the
certificates loaded before stay in service.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from .tls import CertificateReloadError, CoreTLS

logger = logging.getLogger("uringserve.server")


def reload(tls: CoreTLS) -> bool:
    """One reload, logged; whether the new certificates are served."""
    try:
        tls.reload()
    except CertificateReloadError as exc:
        logger.error("SIGHUP: TLS certificates not reloaded, the ones loaded before are still served: %s", exc)
        return False
    names = ", ".join([tls.cert, *(cert for cert, _ in tls.more)])
    logger.info("SIGHUP: TLS certificates reloaded from %s (new connections get them)", names)
    return True


def install(tls: CoreTLS) -> None:
    """SIGHUP reloads `tls`, on the running loop (removed when it closes)."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload, tls)


__all__ = ["install", "reload"]
