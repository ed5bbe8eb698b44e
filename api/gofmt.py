"""Go's ``fmt`` verbs that Ollama's texts are built with: ``%q``, ``%v`` and ``%#v``.

Error messages quote names with ``%q`` and ``/api/show`` prints parameters with ``%#v``;
clients and scripts compare these strings, so they are reproduced exactly.
"""

from __future__ import annotations

import math
from decimal import Decimal

_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def quote(text: str) -> str:
    """``strconv.Quote`` (``%q``): printable characters as they are, the rest escaped."""
    out = ['"']
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():  # Go's IsPrint: the same Unicode categories plus " "
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def float_text(value: float) -> str:
    """A float as ``%v`` prints it: shortest digits, ``%e`` below 1e-4 and from 1e6."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # digits before the decimal point
    prefix = "-" if sign else ""
    exp = point - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{prefix}{digits}{'0' * (point - len(digits))}"
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def value(obj: object) -> str:
    """``%v`` of a decoded JSON scalar."""
    if obj is None:
        return "<nil>"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, float):
        return float_text(obj)
    return str(obj)


def go_syntax(obj: object) -> str:
    """``%#v`` of a decoded JSON scalar: strings quoted, numbers and booleans as ``%v``."""
    return quote(obj) if isinstance(obj, str) else value(obj)
