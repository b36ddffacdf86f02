"""speaker.logs: house log lines as JSON objects for log collectors, and the speaker's --log-format."""
import io
import json
import logging
from datetime import datetime

import pytest

from speaker import logs


@pytest.mark.parametrize("message, event, fields", [
    ("route.replace prefix=10.42.2.0/24 via=192.168.50.12", "route.replace",
     {"prefix": "10.42.2.0/24", "via": "192.168.50.12"}),
    ("nodes.list via=list count=5000 changed=3 deleted=0 resourceVersion=77 seconds=0.912", "nodes.list",
     {"via": "list", "count": 5000, "changed": 3, "deleted": 0, "resourceVersion": 77, "seconds": "0.912"}),
    ("nodes.watch.expired resourceVersion=12 reason=too old resource version relisting", "nodes.watch.expired",
     {"resourceVersion": 12, "reason": "too old resource version relisting"}),
    ("nodes.watch.error cannot reach the Kubernetes API at https://127.0.0.1:1: connection refused; retrying in 0.4s",
     "nodes.watch.error", {}),
    ("x.y level=debug message=hi", "x.y", {"level_": "debug", "message_": "hi"}),  # no clash with ours
    ("free text, no event", None, {}),
    ("", None, {}),
])
def test_fields_of_house_lines(message, event, fields):
    assert logs.fields(message) == (event, fields)


def emit(fmt, level, msg, *args, exc=None):
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("debug", fmt, stream=out)
    try:
        log = logging.getLogger("speaker.test")
        if exc:
            try:
                raise exc
            except Exception:
                log.exception(msg, *args)
        else:
            log.log(level, msg, *args)
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])  # as pytest had it
    return out.getvalue()


def test_json_is_one_object_per_line_with_time_level_logger_message_and_fields():
    line = emit("json", logging.WARNING, "node.condition.error node=%s error=%s", "n1", "HTTP 500: a\nb")
    assert line.endswith("\n") and line.count("\n") == 1
    doc = json.loads(line)
    assert datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ")  # RFC 3339, UTC
    assert (doc["level"], doc["logger"], doc["event"], doc["node"]) == ("warning", "speaker.test", "node.condition.error", "n1")
    assert doc["message"] == "node.condition.error node=n1 error=HTTP 500: a\nb" and doc["error"] == "HTTP 500: a\nb"


def test_json_carries_the_exception_text():
    doc = json.loads(emit("json", logging.ERROR, "speaker.crash where=%s", "loop", exc=RuntimeError("boom")))
    assert doc["level"] == "error" and doc["where"] == "loop"
    assert doc["exception"].startswith("Traceback") and "RuntimeError: boom" in doc["exception"]


def test_text_is_the_house_format():
    line = emit("text", logging.INFO, "speaker.start node=%s", "n1")
    assert line.rstrip().endswith(" INFO speaker.test speaker.start node=n1") and not line.startswith("{")


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError):
        logs.setup("info", "yaml")


def test_a_line_in_words_hands_its_fields_to_json_and_text_stays_as_is():
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for fmt in ("json", "text"):
            logs.setup("debug", fmt, stream=out)
            logging.getLogger("speaker.listwatch").warning(
                "nodes.watch.error %s; retrying in %.1fs", "cannot reach the Kubernetes API at https://x:443: "
                "connection refused", 4.4, extra={"fields": {"resource": "nodes", "retry_in_s": 4.4, "time": "t"}})
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    json_line, text_line = out.getvalue().splitlines()
    doc = json.loads(json_line)
    assert (doc["event"], doc["resource"], doc["retry_in_s"], doc["time_"]) == ("nodes.watch.error", "nodes", 4.4, "t")
    assert doc["time"] != "t" and doc["message"].endswith("connection refused; retrying in 4.4s")
    assert text_line.endswith("WARNING speaker.listwatch nodes.watch.error cannot reach the Kubernetes API at "
                              "https://x:443: connection refused; retrying in 4.4s")
