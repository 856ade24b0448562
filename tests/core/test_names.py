"""Name and label validation, with cases ported from apimachinery's validation_test.go."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetplane.core.names import (
    is_valid_label_key,
    is_valid_label_value,
    validate_dns1123_label,
    validate_dns1123_subdomain,
    validate_label_key,
    validate_label_value,
    validate_labels,
)

LABEL_REGEX_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
SUBDOMAIN_REGEX_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
NAME_PART_REGEX_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
VALUE_REGEX_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
TOO_LONG_63 = "must be no more than 63 characters"


# --- DNS-1123 label (TestIsDNS1123Label) ---

GOOD_DNS_LABELS = ["a", "ab", "abc", "a1", "a-1", "a--1--2--b", "0", "01", "012", "1a", "1-a", "1--a--b--2"]
GOOD_DNS_LABELS += ["a" * 63]
BAD_DNS_LABELS = ["", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a"]
BAD_DNS_LABELS += ["a_b", "1_", "_1", "1_2", ".", "a.", ".a", "a.b", "1.", ".1", "1.2", " ", "a ", " a"]
BAD_DNS_LABELS += ["a b", "1 ", " 1", "1 2", "a" * 64, "abc\n"]


@pytest.mark.parametrize("value", GOOD_DNS_LABELS)
def test_dns1123_label_accepts(value: str) -> None:
    assert validate_dns1123_label(value) == []


@pytest.mark.parametrize("value", BAD_DNS_LABELS)
def test_dns1123_label_rejects(value: str) -> None:
    assert validate_dns1123_label(value) != []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("My-Name", [LABEL_REGEX_MSG]),
        ("a.b", ["must not contain dots"]),  # a valid subdomain gets the specific message
        ("a" * 64, [TOO_LONG_63]),
        ("a." + "b" * 62, [TOO_LONG_63, "must not contain dots"]),
        ("", [LABEL_REGEX_MSG]),
    ],
)
def test_dns1123_label_messages(value: str, expected: list[str]) -> None:
    assert validate_dns1123_label(value) == expected


# --- DNS-1123 subdomain (TestIsDNS1123Subdomain) ---

GOOD_SUBDOMAINS = ["a", "ab", "abc", "a1", "a-1", "a--1--2--b", "0", "01", "012", "1a", "1-a", "1--a--b--2"]
GOOD_SUBDOMAINS += ["a.a", "ab.a", "abc.a", "a1.a", "a-1.a", "a--1--2--b.a", "a.1", "a.01", "0.a"]
GOOD_SUBDOMAINS += ["a.b.c.d.e", "aa.bb.cc.dd.ee", "1.2.3.4.5", "11.22.33.44.55", "a" * 253]
GOOD_SUBDOMAINS += [".".join(["a" * 63] * 4)[:253].rstrip(".")]
BAD_SUBDOMAINS = ["", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a"]
BAD_SUBDOMAINS += ["a_b", "1_", "_1", "1_2", ".", "a.", ".a", "a..b", "1.", ".1", "1..2", " ", "a ", " a"]
BAD_SUBDOMAINS += ["a b", "1 ", " 1", "1 2", "A.a", "aB.a", "ab.A", "A1.a", "a1.A", "A.1", "aB.1", "A1.1"]
BAD_SUBDOMAINS += ["1A.1", "0.A", "01.A", "012.A", "1A.a", "1a.A", "A.B.C.D.E", "AA.BB.CC.DD.EE", "a.B.c.d.e"]
BAD_SUBDOMAINS += ["aa.bB.cc.dd.ee", "a@b", "a,b", "a_b", "a;b", "a:b", "a%b", "a?b", "a$b", "a" * 254]


@pytest.mark.parametrize("value", GOOD_SUBDOMAINS)
def test_dns1123_subdomain_accepts(value: str) -> None:
    assert validate_dns1123_subdomain(value) == []


@pytest.mark.parametrize("value", BAD_SUBDOMAINS)
def test_dns1123_subdomain_rejects(value: str) -> None:
    assert validate_dns1123_subdomain(value) != []


def test_dns1123_subdomain_messages() -> None:
    assert validate_dns1123_subdomain("Example.com") == [SUBDOMAIN_REGEX_MSG]
    assert validate_dns1123_subdomain("a" * 254) == ["must be no more than 253 characters"]


# --- label keys (TestIsQualifiedName) ---

GOOD_KEYS = ["simple", "now-with-dashes", "1-starts-with-num", "1234", "simple/simple"]
GOOD_KEYS += ["now-with-dashes/simple", "now-with-dashes/now-with-dashes", "now.with.dots/simple"]
GOOD_KEYS += ["now-with.dashes-and.dots/simple", "1-num.2-num/3-num", "1234/5678", "1.2.3.4/5678"]
GOOD_KEYS += ["Uppercase_Is_OK_123", "example.com/Uppercase_Is_OK_123", "requests.storage-foo"]
GOOD_KEYS += ["a" * 63, "a" * 253 + "/" + "b" * 63, "x.y_z-1", "in", "notin"]
BAD_KEYS = ["nospecialchars%^=@", "cantendwithadash-", "-cantstartwithadash-", "only/one/slash"]
BAD_KEYS += ["Example.com/abc", "example_com/abc", "example.com/", "/simple", "a" * 64, "a" * 254 + "/abc"]
BAD_KEYS += ["", "with space", "tab\there", "trailing-newline\n", "ünïcode", "a\x00b"]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_label_key_accepts(key: str) -> None:
    assert validate_label_key(key) == []
    assert is_valid_label_key(key)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_label_key_rejects(key: str) -> None:
    assert validate_label_key(key) != []
    assert not is_valid_label_key(key)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # Upstream reports an empty name twice: as empty and as not matching the pattern.
        ("", ["name part must be non-empty", NAME_PART_REGEX_MSG]),
        ("example.com/", ["name part must be non-empty", NAME_PART_REGEX_MSG]),
        ("/simple", ["prefix part must be non-empty"]),
        ("Example.com/abc", ["prefix part " + SUBDOMAIN_REGEX_MSG]),
        ("a" * 64, ["name part must be no more than 63 characters"]),
        ("x" * 254 + "/abc", ["prefix part must be no more than 253 characters"]),
        ("bad-/x-", ["prefix part " + SUBDOMAIN_REGEX_MSG, NAME_PART_REGEX_MSG]),
    ],
)
def test_label_key_messages(key: str, expected: list[str]) -> None:
    assert validate_label_key(key) == expected


def test_label_key_with_two_slashes_gets_the_qualified_name_message() -> None:
    (msg,) = validate_label_key("only/one/slash")
    assert msg.startswith("a qualified name must consist of alphanumeric characters")
    assert msg.endswith("with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')")


# --- label values (TestIsValidLabelValue) ---

GOOD_VALUES = ["simple", "now-with-dashes", "1-starts-with-num", "end-with-num-1", "1234", "a" * 63, ""]
GOOD_VALUES += ["Mixed_Case.and-dots", "in", "notin"]
BAD_VALUES = ["nospecialchars%^=@", "Tama-nui-te-rā.is.Māori.sun", "\\backslashes\\are\\bad"]
BAD_VALUES += ["-starts-with-dash", "ends-with-dash-", ".starts.with.dot", "ends.with.dot.", "a" * 64]
BAD_VALUES += ["with space", "slash/no", "newline\n", "a,b", "a=b", "(a)"]


@pytest.mark.parametrize("value", GOOD_VALUES)
def test_label_value_accepts(value: str) -> None:
    assert validate_label_value(value) == []
    assert is_valid_label_value(value)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_label_value_rejects(value: str) -> None:
    assert validate_label_value(value) != []
    assert not is_valid_label_value(value)


def test_label_value_messages() -> None:
    assert validate_label_value("-x") == [VALUE_REGEX_MSG]
    assert validate_label_value("a" * 64) == [TOO_LONG_63]
    assert validate_label_value("-" * 64) == [TOO_LONG_63, VALUE_REGEX_MSG]


def test_lengths_are_counted_in_utf8_bytes_like_go() -> None:
    # 32 two-byte characters are 64 bytes: too long for Go's len(), though only 32 chars.
    assert TOO_LONG_63 in validate_label_value("é" * 32)
    assert TOO_LONG_63 not in validate_label_value("é" * 31)


def test_validate_labels_pairs_each_problem_with_its_key_in_key_order() -> None:
    problems = validate_labels({"zone": "ok", "Bad Key": "v", "app": "-bad", "fine/x": ""})
    assert problems == [
        ("Bad Key", NAME_PART_REGEX_MSG),
        ("app", VALUE_REGEX_MSG),
    ]
    assert validate_labels({}) == []
    assert validate_labels({"a": "b", "example.com/c": ""}) == []


@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True))
def test_generated_dns_labels_are_valid_labels_subdomains_and_keys(value: str) -> None:
    assert validate_dns1123_label(value) == []
    assert validate_dns1123_subdomain(value) == []
    assert validate_label_key(value) == []
    assert validate_label_value(value) == []


@given(st.text(max_size=80))
def test_validators_never_raise_and_agree_with_predicates(value: str) -> None:
    for validate in (validate_dns1123_label, validate_dns1123_subdomain, validate_label_key):
        assert all(isinstance(msg, str) and msg for msg in validate(value))
    assert is_valid_label_value(value) == (validate_label_value(value) == [])
    # Every valid label value other than "" is also a valid unprefixed key.
    if value and "/" not in value and is_valid_label_value(value):
        assert is_valid_label_key(value)
