"""Schema building blocks shared by kinds."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetplane.core.selectors import SelectorError, parse_any, selector_from_structured


class Schema(BaseModel):
    """Unknown fields are refused, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Condition(Schema):
    type: str
    status: str = Field(pattern="^(True|False|Unknown)$")
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None


class LabelSelectorRequirement(Schema):
    key: str
    operator: str
    values: list[str] | None = None


class LabelSelector(Schema):
    matchLabels: dict[str, str] | None = None
    matchExpressions: list[LabelSelectorRequirement] | None = None


def check_selector(value: Any) -> Any:
    """Accept a selector string or the structured form; refuse what does not parse."""
    try:
        if isinstance(value, str):
            parse_any(value)
        elif isinstance(value, dict):
            selector_from_structured(value)
        elif isinstance(value, LabelSelector):
            selector_from_structured(value.model_dump(exclude_none=True))
    except SelectorError as exc:
        raise ValueError(str(exc)) from exc
    return value


class SelectorField(Schema):
    """Mixin: a ``selector`` that is either ``"k in (a,b),x"`` or ``{matchLabels, matchExpressions}``."""

    selector: str | LabelSelector = ""

    @field_validator("selector", mode="before")
    @classmethod
    def _valid_selector(cls, value: Any) -> Any:
        return check_selector(value)
