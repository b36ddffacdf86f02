"""Kubernetes label selectors in their string form, parsed to values and matched against labels.

The grammar is the one `kubectl get -l` takes: requirements separated by commas, each one of
`key=value` (or `==`), `key!=value`, `key in (v1,v2)`, `key notin (v1)`, `key` (exists) and
`!key` (does not exist). The empty selector matches every set of labels. Pure: no I/O.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"^{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")
_DNS_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SET_RE = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")
_OPS = ("!=", "==", "=")


class SelectorError(ValueError):
    """A label selector that cannot be parsed; one line naming the requirement (speaker.config
    turns it into a ConfigError)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists" ("=" is "in" one value, "!=" is "notin" one value)
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # notin


@dataclass(frozen=True, slots=True)
class Selector:
    """Every requirement must hold; `text` is the selector as written (for status and logs)."""

    requirements: tuple[Requirement, ...] = ()
    text: str = ""

    @property
    def keys(self) -> frozenset[str]:
        """The label keys it reads."""
        return frozenset(r.key for r in self.requirements)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def everything(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return self.text


EVERYTHING = Selector()


def parse(text: str | None, where: str = "selector") -> Selector:
    """A Selector from its string form; SelectorError naming `where` and the bad requirement."""
    if text is None:
        return EVERYTHING
    if not isinstance(text, str):
        raise SelectorError(f"{where}: expected a label selector string such as 'rack=r1', got {text!r}")
    parts = [p.strip() for p in _split(text, where)]
    if parts == [""]:
        return EVERYTHING
    if "" in parts:
        raise SelectorError(f"{where}: {text!r} has an empty requirement (two commas, or one at an end)")
    return Selector(tuple(_requirement(p, where) for p in parts), text.strip())


def _split(text: str, where: str) -> list[str]:
    """Split at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "(":
            depth += 1
            if depth > 1:
                raise SelectorError(f"{where}: {text!r} has nested parentheses")
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"{where}: {text!r} has a ')' without its '('")
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError(f"{where}: {text!r} has a '(' without its ')'")
    parts.append(text[start:])
    return parts


def _requirement(part: str, where: str) -> Requirement:
    m = _SET_RE.match(part)
    if m:
        key, op, inner = m.groups()
        values = [v.strip() for v in inner.split(",")]
        if values == [""]:
            raise SelectorError(f"{where}: {part!r}: '{op}' needs at least one value")
        return Requirement(_key(key, part, where), op, frozenset(_value(v, part, where) for v in values))
    if part.startswith("!"):
        return Requirement(_key(part[1:].strip(), part, where), "!exists")
    for op in _OPS:
        if op in part:
            key, _, value = part.partition(op)
            return Requirement(_key(key.strip(), part, where), "notin" if op == "!=" else "in",
                               frozenset({_value(value.strip(), part, where)}))
    return Requirement(_key(part, part, where), "exists")


def _key(key: str, part: str, where: str) -> str:
    prefix, slash, name = key.rpartition("/")
    ok = bool(_NAME_RE.match(name)) and (not slash or (0 < len(prefix) <= 253 and bool(_DNS_RE.match(prefix))))
    if not ok:
        raise SelectorError(f"{where}: {part!r}: {key!r} is not a label key ([prefix/]name, name 1..63 "
                            "characters of letters, digits, '-', '_', '.')")
    return key


def _value(value: str, part: str, where: str) -> str:
    if not _VALUE_RE.match(value):
        raise SelectorError(f"{where}: {part!r}: {value!r} is not a label value (0..63 characters of letters, "
                            "digits, '-', '_', '.', starting and ending with a letter or digit)")
    return value
