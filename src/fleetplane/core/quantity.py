"""Kubernetes resource quantities: ``"500m"``, ``"2"``, ``"1Gi"``, ``"1e3"``.

The grammar is Kubernetes' (``k8s.io/apimachinery/pkg/api/resource``)::

    quantity ::= <signedNumber><suffix>
    suffix   ::= <binarySI> | <decimalSI> | <decimalExponent>
    binarySI ::= Ki | Mi | Gi | Ti | Pi | Ei
    decimalSI ::= n | u | m | "" | k | M | G | T | P | E
    decimalExponent ::= "e" <signedNumber> | "E" <signedNumber>

As upstream, ``cpu_millis`` rounds up to a whole millicore and ``memory_bytes`` up to a
whole byte, so a reservation is never smaller than what was asked for.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

# Upstream limits a quantity to int64 after scaling; so do we.
MAX_VALUE = 2**63 - 1

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<exp>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?))"
)


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity (or not a valid one for its use)."""


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity, e.g. ``"1Ki"`` -> 1024, ``"500m"`` -> 0.5."""
    if isinstance(value, bool):
        raise QuantityError(f"quantity must be a string or a number, not {value!r}")
    if isinstance(value, int | float):
        value = repr(value) if isinstance(value, float) else str(value)  # 1e+20 is exponent form
    if not isinstance(value, str):
        raise QuantityError(f"quantity must be a string or a number, not {type(value).__name__}")
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise QuantityError(
            f"quantity {value!r} must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (e.g. 500m, 2, 1Gi, 512Mi, 1G, 1e3)"
        )
    try:
        number = Decimal(match["number"])
        if match["exp"] is not None:
            exponent = int(match["exp"][1:])
            if abs(exponent) > 100:
                raise QuantityError(f"quantity {value!r}: exponent {exponent} is out of range")
            return number.scaleb(exponent)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise QuantityError(f"quantity {value!r} is not a number") from exc
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    return number * _DECIMAL[suffix]


def _whole(value: Decimal, original: object, what: str) -> int:
    if value < 0:
        raise QuantityError(f"{what} {original!r} must not be negative")
    whole = int(value.to_integral_value(rounding=ROUND_CEILING))
    if whole > MAX_VALUE:
        raise QuantityError(f"{what} {original!r} is too large")
    return whole


def cpu_millis(value: str | int | float) -> int:
    """CPU in millicores: ``"500m"`` -> 500, ``"2"`` -> 2000, ``"0.5"`` -> 500 (rounded up)."""
    return _whole(parse_quantity(value) * 1000, value, "cpu")


def memory_bytes(value: str | int | float) -> int:
    """Memory in bytes: ``"1Gi"`` -> 1073741824, ``"1G"`` -> 10**9, ``"1e3"`` -> 1000 (rounded up)."""
    return _whole(parse_quantity(value), value, "memory")
