"""An AlertReceiver's webhook headers must be sendable over HTTP: refused at write time with
the field named, and, if one is stored anyway (an older schema), a failed delivery rather
than a crash of the evaluation tick."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fleetplane.controllers.alert_notify import NotifyError, post
from fleetplane.core.errors import ApiError
from fleetplane.kinds.alerts import ALERT_RECEIVER


def receiver(headers: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "fleetplane.io/v1",
        "kind": "AlertReceiver",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"webhook": {"url": "https://alerts.example.net/hook", "headers": headers}},
    }


def test_latin1_headers_are_accepted() -> None:
    out = ALERT_RECEIVER.normalize(receiver({"Authorization": "Bearer TOKEN", "X-Team": "caf\u00e9"}))
    assert out["spec"]["webhook"]["headers"]["Authorization"] == "Bearer TOKEN"


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"Authorization": "Bearer \u2026"}, "only latin-1"),
        ({"Bad Name": "x"}, "not a valid HTTP header name"),
        ({"X-Split": "a\r\nInjected: yes"}, "line breaks"),
    ],
)
def test_unsendable_headers_are_refused_naming_the_field(headers: dict[str, str], said: str) -> None:
    with pytest.raises(ApiError) as caught:
        ALERT_RECEIVER.normalize(receiver(headers))
    assert caught.value.code == 422
    assert any(c.field == "spec.webhook.headers" and said in c.message for c in caught.value.causes)


def test_a_stored_unsendable_header_is_a_failed_delivery() -> None:
    async def send() -> None:
        async with httpx.AsyncClient() as client:
            await post(client, "http://127.0.0.1:9/hook", {"x": 1}, 1.0, headers={"A": "\u2026"})

    with pytest.raises(NotifyError, match="cannot send to this receiver"):
        asyncio.run(send())
