"""Log output: the house text format, or one JSON object per line for log collectors.

A house log line is `event.name key=value key=value ...` (free words may follow the event name).
The JSON form carries time (RFC 3339, UTC), level, logger and message, then `event` and the
key=value pairs as fields of their own (and those a line in words hands over as
`extra={"fields": {...}}`), and `exception` with the traceback if there is one. A
value runs to the next ` key=` (so `reason=too old resource version` stays whole); whole numbers
become numbers. Cilium and Calico offer the same switch (logrus' JSON formatter).
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_EVENT = re.compile(r"[a-z][a-z0-9_-]*(?:\.[a-z0-9_-]+)+")
_KEY = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_.-]*)=")
_RESERVED = frozenset({"time", "level", "logger", "message", "event", "exception"})


def fields(message: str) -> tuple[str | None, dict[str, Any]]:
    """(event name, {key: value}) of a house log line; (None, {}) for free text."""
    first = message.split(maxsplit=1)[0] if message.strip() else ""
    event = first if _EVENT.fullmatch(first) else None
    out: dict[str, Any] = {}
    keys = list(_KEY.finditer(message))
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(message)
        value = message[m.end():end].strip().rstrip(";,")
        key = m.group(1)
        out[f"{key}_" if key in _RESERVED else key] = _typed(value)
    return event, out


def _typed(value: str) -> Any:
    if re.fullmatch(r"-?\d{1,18}", value):
        return int(value)
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name, "message": message}
        event, kv = fields(message)
        if event:
            doc["event"] = event
        doc.update(kv)
        extra = getattr(record, "fields", None)  # log.warning(..., extra={"fields": {...}}) for words-only lines
        if isinstance(extra, dict):
            doc.update({f"{k}_" if k in _RESERVED else k: v for k, v in extra.items()})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup(level: str, fmt: str = "text", stream=None) -> None:
    """Configure the root logger (again, if called twice): fmt `text` or `json`."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: expected text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
