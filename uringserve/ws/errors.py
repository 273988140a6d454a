"""The WebSocket codec's error, apart from the codec so that frames.py and
deflate.py (which frames.py drives) both raise it without importing each other."""


class ProtocolError(Exception):
    """The peer broke RFC 6455/7692: close with `code` (1002, 1007, 1009) and
    `reason` (str, <= 123 bytes UTF-8)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
