"""The speaker's configuration errors and the one-line parsers of single values (a CIDR, an
address, an integer in a range, a boolean, a list, a mapping, a label selector, a path) that
config.py and peer_config.py share; and `defaults`, how a loader reads a dataclass's defaults.

Every refusal is a ConfigError with one line naming the field.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, fields
from types import SimpleNamespace
from typing import Any

from bgp.types import IPAddress, IPNetwork

from . import selector
from .selector import Selector


class SpeakerError(Exception):
    """Base of the speaker package's errors."""


class ConfigError(SpeakerError):
    """The configuration is refused; the message is one line naming the field."""


def defaults(cls: type) -> SimpleNamespace:
    """The field defaults of dataclass `cls` as attributes: a loader reads a default here, so the
    dataclass is the one place it is stated."""
    return SimpleNamespace(**{f.name: f.default for f in fields(cls) if f.default is not MISSING})


def net(value: Any, where: str) -> IPNetwork:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a CIDR string, got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ConfigError(f"{where}: {value} has host bits set (did you mean "
                              f"{ipaddress.ip_network(value, strict=False)}?)") from None
        raise ConfigError(f"{where}: {value!r} is not a valid CIDR") from None


def ip(value: Any, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a valid IP address") from None


def integer(value: Any, where: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not an integer") from None
    if isinstance(value, bool) or not lo <= n <= hi:
        raise ConfigError(f"{where}: {value!r} is out of range {lo}..{hi}")
    return n


def seconds(value: Any, where: str, hi: float = 86400.0) -> float:
    """A duration in seconds: a number above 0 and at most `hi` (a day unless said otherwise)."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number of seconds") from None
    if isinstance(value, bool) or not 0 < n <= hi:
        raise ConfigError(f"{where}: {value!r} is out of range (0, {hi:g}] seconds")
    return n


def listed(raw: dict, key: str) -> list:
    """raw[key] as a list (a comma-separated string is one too); absent or empty: []."""
    value = raw.get(key) or []
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list")
    return value


def boolean(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{where}: {value!r} is not true or false")


def mapping(raw: dict, key: str) -> dict:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping")
    return value


def known_keys(raw: Mapping, known: Iterable[str], where: str = "") -> None:
    """Refuse the first unknown key (sorted), naming it with its place and the nearest known one."""
    known = sorted(known)
    for key in sorted(map(str, raw)):
        if key in known:
            continue
        near = [k for k in known if k.lower() == key.lower()] or difflib.get_close_matches(key, known, n=1, cutoff=0.7)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{where}{'.' if where else ''}{key}: unknown setting{hint}")


def label_selector(value: Any, where: str) -> Selector:
    try:
        return selector.parse(value, where)
    except selector.SelectorError as exc:
        raise ConfigError(str(exc)) from None


def abspath(value: Any, where: str) -> str:
    text = str(value)
    if not os.path.isabs(text):
        raise ConfigError(f"{where}: {text!r} must be an absolute path")
    return text


def one_of(value: Any, choices: tuple[str, ...], where: str) -> str:
    """A choice among lower-case words, in any case and with spaces around."""
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return text
