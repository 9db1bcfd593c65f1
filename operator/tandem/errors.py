"""Problems a valid-looking resource can still have; each becomes a False condition and a Warning event."""

from __future__ import annotations


class Problem(Exception):
    """A spec the API server accepted that the operator cannot honour now (unknown pool, no model yet).

    `reason` is CamelCase for conditions and events; `message` names the field or object at fault.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
