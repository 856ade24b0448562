"""Kubernetes quantities, with cases after upstream's ``quantity_test.go``."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fleetplane.core.quantity import QuantityError, cpu_millis, memory_bytes, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", "0"),
        ("0n", "0"),
        ("0u", "0"),
        ("0m", "0"),
        ("0Ki", "0"),
        ("0k", "0"),
        ("0Mi", "0"),
        ("0M", "0"),
        ("0Gi", "0"),
        ("0G", "0"),
        ("0Ti", "0"),
        ("0T", "0"),
        ("1n", "1e-9"),
        ("1u", "1e-6"),
        ("1m", "0.001"),
        ("1", "1"),
        ("1k", "1000"),
        ("1Ki", "1024"),
        ("1M", "1000000"),
        ("1Mi", "1048576"),
        ("1G", "1000000000"),
        ("1Gi", "1073741824"),
        ("1T", "1e12"),
        ("1Ti", "1099511627776"),
        ("1P", "1e15"),
        ("1Pi", "1125899906842624"),
        ("1E", "1e18"),
        ("1Ei", "1152921504606846976"),
        ("1e3", "1000"),
        ("1E6", "1000000"),
        ("1e-3", "0.001"),
        ("1E+3", "1000"),
        ("1.5Gi", "1610612736"),
        ("0.5", "0.5"),
        (".5", "0.5"),
        ("5.", "5"),
        ("+5", "5"),
        ("-5m", "-0.005"),
        ("100m", "0.1"),
        ("1.001", "1.001"),
    ],
)
def test_parse(text: str, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "1.1.M",
        "1+1.0M",
        "0.1mi",
        "0.1am",
        "aoeu",
        ".5i",
        "1i",
        "-3.01i",
        "-3.01e-",
        "1e",
        "1E+",
        "1KB",
        "1K",
        "1kb",
        "1Gb",
        "1.1e1.1",
        "Mi",
        ".",
        "1e1000",
    ],
)
def test_invalid(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("500m", 500),
        ("2", 2000),
        ("0.5", 500),
        ("1.5", 1500),
        ("0.1m", 1),  # rounds up, as MilliValue() does
        ("1001m", 1001),
        ("100u", 1),
        ("1k", 1_000_000),
        ("0", 0),
        (2, 2000),
        (0.25, 250),
    ],
)
def test_cpu_millis(text: str | float, millis: int) -> None:
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1Gi", 1073741824),
        ("512Mi", 536870912),
        ("1G", 1_000_000_000),
        ("1e3", 1000),
        ("128974848", 128974848),
        ("129e6", 129_000_000),
        ("123Mi", 128974848),
        ("1.5", 2),  # rounds up to a whole byte
        ("100m", 1),
        (4096, 4096),
    ],
)
def test_memory_bytes(text: str | int, size: int) -> None:
    assert memory_bytes(text) == size


def test_negative_and_huge_are_refused_with_a_clear_message() -> None:
    with pytest.raises(QuantityError, match="must not be negative"):
        cpu_millis("-1")
    with pytest.raises(QuantityError, match="too large"):
        memory_bytes("9Ei")
    with pytest.raises(QuantityError, match="regular expression"):
        memory_bytes("1 Gi")
    with pytest.raises(QuantityError, match="string or a number"):
        cpu_millis(True)
