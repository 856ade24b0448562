"""Kubernetes label selectors, with the semantics of k8s.io/apimachinery/pkg/labels.

Both the string syntax (``env in (a,b),!legacy,zone!=z``) and the structured
``{"matchLabels": ..., "matchExpressions": ...}`` form produce an immutable
:class:`Selector` whose ``str()`` is canonical. Deliberate differences from upstream:
``>``/``<`` (Gt/Lt) are lexed but rejected, as the structured form has no such
operators; ``==`` is stored and printed as ``=``; NUL is an ordinary (invalid)
character, where upstream's lexer ends the input there and so reads
``"\\x00anything"`` as "select everything".
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

from fleetplane.core.names import validate_label_key, validate_label_value

__all__ = ["OPERATORS", "Requirement", "Selector", "SelectorError", "Token", "parse_any"]
__all__ += ["parse_selector", "selector_from_set", "selector_from_structured", "selector_to_structured"]
__all__ += ["tokenize"]

# Accepted by Requirement; "==" is normalised to "=".
OPERATORS = ("=", "==", "!=", "in", "notin", "exists", "!")
_SET_OPS = frozenset({"in", "notin"})
_EXACT_OPS = frozenset({"=", "!="})
_UNARY_OPS = frozenset({"exists", "!"})
_POSITIVE_OPS = frozenset({"=", "in"})
# Requirements are ordered by key (as upstream's parser does), then by these ranks
# so that the canonical string is total and deterministic.
_OP_RANK = {"=": 0, "in": 1, "!=": 2, "notin": 3, "exists": 4, "!": 5}


class SelectorError(ValueError):
    """A selector that cannot be parsed or is invalid.

    ``position`` is the 0-based offset in the string form (-1 for the structured
    form); ``field`` is the field path in the structured form ("" for strings).
    """

    def __init__(self, message: str, position: int = -1, field: str = "") -> None:
        super().__init__(message)
        self.position = position
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.position, self.field))


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _field_error(path: str, detail: str) -> SelectorError:
    return SelectorError(f"{path}: {detail}" if path else detail, field=path)


def _invalid(key: object, values: Sequence[object]) -> tuple[str, str] | None:
    """``(field, detail)`` for the first bad key or value, else None."""
    if not isinstance(key, str):
        return "key", "must be a string"
    if errs := validate_label_key(key):
        return "key", f"Invalid value: {_quote(key)}: {'; '.join(errs)}"
    for i, value in enumerate(values):
        if not isinstance(value, str):
            return f"values[{i}]", "must be a string"
        if errs := validate_label_value(value):
            return f"values[{i}]", f"Invalid value: {_quote(value)}: {'; '.join(errs)}"
    return None


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One ``key <operator> values`` condition; validated on construction."""

    key: str
    operator: str
    values: tuple[str, ...] = ()
    _value_set: frozenset[str] = dataclasses.field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        op = "=" if self.operator == "==" else self.operator
        if not isinstance(op, str) or op not in _OP_RANK:
            raise _field_error(
                "operator", f"Unsupported value: {self.operator!r}: supported values: {', '.join(OPERATORS)}"
            )
        if isinstance(self.values, str):  # tuple("ab") would silently mean ("a", "b")
            raise _field_error("values", "must be a tuple of strings, not a string")
        values = tuple(self.values)
        if op in _SET_OPS and not values:
            raise _field_error("values", "for 'in', 'notin' operators, values set can't be empty")
        if op in _EXACT_OPS and len(values) != 1:
            raise _field_error("values", "exact-match compatibility requires one single value")
        if op in _UNARY_OPS and values:
            raise _field_error("values", "values set must be empty for exists and does not exist")
        if problem := _invalid(self.key, values):
            raise _field_error(*problem)
        if op in _SET_OPS:
            values = tuple(sorted(set(values)))
        object.__setattr__(self, "operator", op)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "_value_set", frozenset(values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if self.key not in labels:
            # Upstream: != and notin match objects without the key; only "!" else does.
            return op in ("!=", "notin", "!")
        if op in _UNARY_OPS:
            return op == "exists"
        return (labels[self.key] in self._value_set) == (op in _POSITIVE_OPS)

    def __str__(self) -> str:
        op = self.operator
        if op == "exists":
            return self.key
        if op == "!":
            return "!" + self.key
        if op in _SET_OPS:
            return f"{self.key} {op} ({','.join(self.values)})"
        return f"{self.key}{op}{self.values[0]}"


def _sort_key(req: Requirement) -> tuple[str, int, tuple[str, ...]]:
    return (req.key, _OP_RANK[req.operator], req.values)


@dataclasses.dataclass(frozen=True)
class Selector:
    """A conjunction of requirements; no requirements selects everything."""

    requirements: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "requirements", tuple(sorted(self.requirements, key=_sort_key)))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(req.matches(labels) for req in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(req) for req in self.requirements)


# --- string form -----------------------------------------------------------


class Token(NamedTuple):
    """A lexer token. ``kind`` is the symbol or keyword itself (``"=="``, ``"in"``),
    ``"identifier"`` for keys and values, or ``"end"`` after the last token."""

    kind: str
    literal: str
    position: int


_WHITESPACE = frozenset(" \t\r\n")
_SPECIAL = frozenset("=!(),<>")
_SYMBOLS = frozenset({"=", "==", "!=", "!", "(", ")", ",", "<", ">"})


def tokenize(text: str) -> list[Token]:
    """Split ``text`` like upstream's Lexer; always ends with an "end" token."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i >= n:
            tokens.append(Token("end", "", n))
            return tokens
        if text[i] in _SPECIAL:
            # Longest symbol wins ("!=" over "!"); all two-char symbols extend one-char ones.
            symbol = text[i : i + 2] if text[i : i + 2] in _SYMBOLS else text[i]
            tokens.append(Token(symbol, symbol, i))
            i += len(symbol)
            continue
        start = i
        while i < n and text[i] not in _SPECIAL and text[i] not in _WHITESPACE:
            i += 1
        literal = text[start:i]
        tokens.append(Token(literal if literal in ("in", "notin") else "identifier", literal, start))


_BINARY = {"in": "in", "notin": "notin", "=": "=", "==": "=", "!=": "!="}
_KEY_START = ("identifier", "!")


class _Parser:
    """Recursive descent mirroring upstream's Parser. As with its "Values" context,
    ``in``/``notin`` are keywords only where an operator is expected."""

    def __init__(self, text: str) -> None:
        self._tokens = tokenize(text)
        self._pos = 0

    def _peek(self, operator: bool = False) -> Token:
        tok = self._tokens[self._pos]
        if not operator and tok.kind in ("in", "notin"):
            return tok._replace(kind="identifier")
        return tok

    def _next(self, operator: bool = False) -> Token:
        tok = self._peek(operator)
        self._pos = min(self._pos + 1, len(self._tokens) - 1)  # "end" is sticky
        return tok

    @staticmethod
    def _unexpected(tok: Token, expected: str) -> SelectorError:
        what = "unexpected end of input" if tok.kind == "end" else f"unexpected token {_quote(tok.literal)}"
        return SelectorError(f"{what} at position {tok.position}: expected {expected}", tok.position)

    def parse(self) -> Selector:
        requirements: list[Requirement] = []
        tok = self._peek()
        while tok.kind != "end":
            if tok.kind not in _KEY_START:
                raise self._unexpected(tok, "'!', a label key or end of input")
            requirements.append(self._requirement())
            tok = self._next()
            if tok.kind == "end":
                break
            if tok.kind != ",":
                raise self._unexpected(tok, "',' or end of input")
            tok = self._peek()
            if tok.kind not in _KEY_START:
                raise self._unexpected(tok, "'!' or a label key after ','")
        return Selector(tuple(requirements))

    def _requirement(self) -> Requirement:
        tok = self._next()
        negated = tok.kind == "!"
        if negated:
            tok = self._next()
        if tok.kind != "identifier":
            raise self._unexpected(tok, "a label key")
        key = self._checked(tok, "key", validate_label_key(tok.literal))
        if negated:
            # Whatever follows "!key" must be "," or the end; parse() reports otherwise.
            return Requirement(key, "!")
        if self._peek().kind in ("end", ","):
            return Requirement(key, "exists")
        tok = self._next(operator=True)
        if tok.kind in (">", "<"):
            raise SelectorError(
                f"unsupported operator {_quote(tok.literal)} at position {tok.position}: "
                "numeric comparisons ('>', '<') are not supported in label selectors",
                tok.position,
            )
        op = _BINARY.get(tok.kind)
        if op is None:
            raise self._unexpected(tok, "an operator: in, notin, =, ==, !=")
        values = self._value_set() if op in _SET_OPS else [self._exact_value()]
        return Requirement(key, op, tuple(values))

    @staticmethod
    def _checked(tok: Token, what: str, errs: list[str]) -> str:
        if errs:
            where = f"{_quote(tok.literal)} at position {tok.position}"
            raise SelectorError(f"invalid label {what} {where}: {'; '.join(errs)}", tok.position)
        return tok.literal

    def _value(self, tok: Token) -> str:
        return self._checked(tok, "value", validate_label_value(tok.literal))

    def _exact_value(self) -> str:
        if self._peek().kind in ("end", ","):
            return ""  # "k=" selects the empty value
        tok = self._next()
        if tok.kind != "identifier":
            raise self._unexpected(tok, "a label value")
        return self._value(tok)

    def _value_set(self) -> list[str]:
        tok = self._next()
        if tok.kind != "(":
            raise self._unexpected(tok, "'('")
        tok = self._peek()
        if tok.kind == ")":
            self._next()
            return [""]  # upstream: "()" is the set holding only the empty value
        if tok.kind not in ("identifier", ","):
            raise self._unexpected(tok, "a label value, ',' or ')'")
        values = self._value_list()
        self._next()  # the ")" that _value_list stopped at
        return values

    def _value_list(self) -> list[str]:
        # A faithful port of upstream parseIdentifiersList, quirks included: empty
        # entries are "" values, yet "(a,,)" and "(,,)" are rejected.
        values: list[str] = []
        while True:
            tok = self._next()
            if tok.kind == "identifier":
                values.append(self._value(tok))
                follow = self._peek()
                if follow.kind == ")":
                    return values
                if follow.kind != ",":
                    raise self._unexpected(follow, "',' or ')'")
            elif tok.kind == ",":
                if not values:
                    values.append("")  # "(,"
                follow = self._peek()
                if follow.kind == ")":
                    values.append("")  # ",)"
                    return values
                if follow.kind == ",":
                    self._next()
                    values.append("")  # ",,"
            else:
                raise self._unexpected(tok, "a label value or ','")


def parse_selector(text: str) -> Selector:
    """Parse the string form; "" (or only whitespace) selects everything."""
    if not isinstance(text, str):
        raise SelectorError(f"selector must be a string, not {type(text).__name__}")
    return _Parser(text).parse()


def selector_from_set(labels: Mapping[str, str]) -> Selector:
    """A selector requiring exactly these labels (upstream ValidatedSelectorFromSet)."""
    return Selector(tuple(Requirement(key, "=", (value,)) for key, value in labels.items()))


# --- structured form -------------------------------------------------------

_TOP_FIELDS = ("matchExpressions", "matchLabels")
_EXPR_FIELDS = ("key", "operator", "values")
_FROM_STRUCTURED = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


def _check_fields(obj: Mapping[Any, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for name in obj:
        if name not in allowed:
            path = f"{prefix}.{name}" if prefix else str(name)
            raise _field_error(path, f"unknown field (allowed: {', '.join(allowed)})")


def _structured_label(key: Any, value: Any) -> Requirement:
    if problem := _invalid(key, [value]):
        raise _field_error(f"matchLabels[{key}]", problem[1])
    return Requirement(key, "=", (value,))


def _structured_expression(expr: Any, path: str) -> Requirement:
    if not isinstance(expr, Mapping):
        raise _field_error(path, "must be an object")
    _check_fields(expr, _EXPR_FIELDS, path)
    operator = expr.get("operator")
    op = _FROM_STRUCTURED.get(operator) if isinstance(operator, str) else None
    if op is None:
        raise _field_error(
            f"{path}.operator",
            f"Invalid value: {_quote(operator) if isinstance(operator, str) else repr(operator)}: "
            "not a valid selector operator "
            f"(supported: {', '.join(_FROM_STRUCTURED)})",
        )
    raw_values = [] if (given := expr.get("values")) is None else given
    if isinstance(raw_values, str) or not isinstance(raw_values, Sequence):
        raise _field_error(f"{path}.values", "must be a list of strings")
    if op in _SET_OPS and not raw_values:
        raise _field_error(
            f"{path}.values", "Required value: must be specified when `operator` is 'In' or 'NotIn'"
        )
    if op in _UNARY_OPS and raw_values:
        raise _field_error(
            f"{path}.values", "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        )
    if problem := _invalid(key := expr.get("key"), raw_values):
        raise _field_error(f"{path}.{problem[0]}", problem[1])
    return Requirement(cast(str, key), op, tuple(raw_values))


def selector_from_structured(obj: Mapping[str, Any]) -> Selector:
    """Build a selector from the structured form, validated as upstream
    ValidateLabelSelector does; the first problem is raised with its field path."""
    if not isinstance(obj, Mapping):
        raise _field_error("", f"label selector must be an object, not {type(obj).__name__}")
    _check_fields(obj, _TOP_FIELDS, "")
    requirements: list[Requirement] = []
    labels = obj.get("matchLabels")
    if labels is not None:
        if not isinstance(labels, Mapping):
            raise _field_error("matchLabels", "must be an object mapping label keys to values")
        requirements.extend(_structured_label(key, value) for key, value in labels.items())
    expressions = obj.get("matchExpressions")
    if expressions is not None:
        if isinstance(expressions, str) or not isinstance(expressions, Sequence):
            raise _field_error("matchExpressions", "must be a list")
        requirements.extend(
            _structured_expression(expr, f"matchExpressions[{i}]") for i, expr in enumerate(expressions)
        )
    return Selector(tuple(requirements))


_TO_STRUCTURED = {op: name for name, op in _FROM_STRUCTURED.items()} | {"=": "In", "!=": "NotIn"}


def selector_to_structured(sel: Selector) -> dict[str, Any]:
    """The structured form of ``sel`` (always representable): ``k=v`` goes to matchLabels
    (a second ``=`` on the same key becomes ``In``), ``k!=v`` becomes ``NotIn [v]``."""
    match_labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    for req in sel.requirements:
        if req.operator == "=" and req.key not in match_labels:
            match_labels[req.key] = req.values[0]
            continue
        expr: dict[str, Any] = {"key": req.key, "operator": _TO_STRUCTURED[req.operator]}
        if req.values:
            expr["values"] = list(req.values)
        expressions.append(expr)
    out: dict[str, Any] = {}
    if match_labels:
        out["matchLabels"] = match_labels
    if expressions:
        out["matchExpressions"] = expressions
    return out


def parse_any(value: str | Mapping[str, Any] | None) -> Selector:
    """Accept either form; ``None`` and ``""`` select everything."""
    if value is None:
        return Selector()
    if isinstance(value, str):
        return parse_selector(value)
    if isinstance(value, Mapping):
        return selector_from_structured(value)
    raise SelectorError(f"a selector must be a string or an object, not {type(value).__name__}")
