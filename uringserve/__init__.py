"""uringserve: a network-server framework whose event core is Linux io_uring."""

from .host import UringUnavailable
from .loop import EventLoopPolicy, UringEventLoop, new_event_loop, run
from .ring import RingConfig

__all__ = ["UringEventLoop", "EventLoopPolicy", "RingConfig", "UringUnavailable", "new_event_loop", "run"]
__version__ = "0.1.0"
