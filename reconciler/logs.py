"""Structured log lines (``key=value``) for the daemon's stderr.

Callers pass fields as ``extra={"fields": {...}}``; the formatter renders
``ts=... level=... logger=... msg="..." key=value ...`` on one line, quoting
values with spaces, quotes or ``=``. Installing the handler is ``main()``'s
job (process-wide state); this module only defines it.
"""

from __future__ import annotations

import logging
import time
from typing import Any


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """``log.info("msg", extra=fields(prefix=p))``."""
    return {"fields": values}
