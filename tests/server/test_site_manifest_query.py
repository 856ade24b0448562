"""A long-poll's query (``after``, ``waitSeconds``) is split without starlette's parser when
nothing in it is escaped: the parameters must read exactly as ``request.query_params`` gives
them, whatever the query."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from fleetplane.core.errors import ApiError
from fleetplane.server.site_manifest_api import _query, _waits


def request_for(query: bytes) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "query_string": query,
    }
    return Request(scope)


QUERY_BYTES = st.text(alphabet="afterwaitSeconds0123456789=&%+-. é", max_size=60).map(lambda s: s.encode())


@given(QUERY_BYTES)
def test_the_parameters_read_as_starlette_reads_them(query: bytes) -> None:
    request = request_for(query)
    starlette = {name: request.query_params[name] for name in request.query_params}
    assert dict(_query(request_for(query))) == starlette


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", (0, 0.0)),
        (b"after=7&waitSeconds=30", (7, 30.0)),
        (b"waitSeconds=2.5&after=3&after=4", (4, 2.5)),  # the last value, as starlette reads it
        (b"after=7&waitSeconds=600", (7, 60.0)),  # at most MAX_WAIT
        (b"after=%37&waitSeconds=1", (7, 1.0)),  # escaped: starlette's parser
    ],
)
def test_a_long_polls_wait(query: bytes, expected: tuple[int, float]) -> None:
    assert _waits(request_for(query)) == expected


@pytest.mark.parametrize("query", [b"after=x", b"after=-1", b"waitSeconds=nan", b"after=1.5"])
def test_a_bad_wait_is_a_400_naming_the_parameter(query: bytes) -> None:
    with pytest.raises(ApiError) as err:
        _waits(request_for(query))
    name = query.split(b"=")[0].decode()
    assert err.value.code == 400 and name in err.value.message
