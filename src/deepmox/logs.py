"""Logging: JSON lines on stdout for the journal, or plain text for a terminal.

Records carry ``event``, ``job_id``, ``kind``, ``attempt``, ``step``,
``error_class`` and ``node`` when they have them (pass them in ``extra``).
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

FIELDS = ("event", "job_id", "kind", "attempt", "step", "error_class")
_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
            "node": self.node,
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encode(out).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(fmt: str, node: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout if fmt == "json" else sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else TextFormatter())
    root = logging.getLogger("deepmox")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
