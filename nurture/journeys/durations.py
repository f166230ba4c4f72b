"""Durations as marketers write them: "1d", "3h30m", "2w", or ISO 8601 ("P1D", "PT90M")."""

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, TypeAdapter, ValidationError

_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_SHORT_FORM = re.compile(r"^\s*(?:\d+\s*[wdhms]\s*)+$")
_SHORT_PART = re.compile(r"(\d+)\s*([wdhms])")
_ISO_ADAPTER = TypeAdapter(timedelta)


def parse_duration(value: Any) -> timedelta:
    """Turn "1d", "-7d", "P1D" or a number of seconds into a timedelta; raise ValueError otherwise.

    Durations are whole seconds: nothing in a journey is timed finer, and the short form that
    definitions are stored in has no fractions.
    """
    try:
        parsed = _parse(value)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too long") from None
    if parsed.microseconds:
        raise ValueError(f"duration {value!r} is not a whole number of seconds")
    return parsed


def _parse(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration must be text like '1d' or '3h30m', not true/false")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(
            f"a duration must be text like '1d' or '3h30m', got {type(value).__name__}"
        )
    text = value.strip()
    sign = 1
    if text.startswith("-"):
        sign, text = -1, text[1:]
    if _SHORT_FORM.match(text):
        seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _SHORT_PART.findall(text))
        return timedelta(seconds=sign * seconds)
    if text.upper().startswith("P"):
        try:
            return sign * _ISO_ADAPTER.validate_python(text)
        except ValidationError:
            pass
    raise ValueError(
        f"invalid duration {value!r}: use a number with a unit (w, d, h, m, s) such as "
        "'1d' or '3h30m', or ISO 8601 such as 'P1D'"
    )


def format_duration(value: timedelta) -> str:
    """The short form of a duration, e.g. "1d12h"; the inverse of `parse_duration`."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


# A timedelta that accepts the friendly forms and serializes back to them.
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
