"""Bad input gets a 4xx JSON error that says what is wrong, never a 500."""

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import API_KEY

CHAT = "/v1/chat/completions"


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str, str]:
    body = await response.json()
    return response.status, body["error"]["type"], body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        (CHAT, b"{not json", 400, "malformed JSON"),
        (CHAT, b"", 400, "body is empty"),
        (CHAT, b'{"model": 3, "messages": []}', 422, "$.model"),
        (CHAT, b'{"model": "sim-small"}', 422, "messages"),
        (CHAT, b'{"model": "sim-small", "messages": [{"role": "robot"}]}', 422, "role"),
        (CHAT, b'{"model": "sim-small", "messages": []}', 422, "at least one message"),
        (
            CHAT,
            b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}',
            404,
            "sim-small",
        ),
        ("/v1/workflows/greet/invoke", b'{"input": 5}', 422, "$.input"),
        ("/v1/workflows/greet/invoke", b'{"inptu": {}}', 422, "inptu"),
        (
            "/v1/workflows/nosuch/invoke",
            b'{"input": {}}',
            404,
            "known workflows: explode, greet, nap",
        ),
        ("/v1/workflows/nosuch/runs", b'{"input": {}}', 404, "no workflow named 'nosuch'"),
        ("/v1/workflows/greet/runs", b"[1, 2]", 422, "Expected `object`"),
    ],
)
async def test_bad_bodies(
    http: aiohttp.ClientSession, path: str, body: bytes, status: int, says: str
) -> None:
    async with http.post(path, data=body, headers={"content-type": "application/json"}) as resp:
        got_status, _, message = await error_of(resp)
    assert got_status == status
    assert says in message


async def test_body_over_the_limit_is_413_with_or_without_length(
    http: aiohttp.ClientSession,
) -> None:
    big = b'{"model": "sim-small", "messages": [' + b" " * 70_000 + b"]}"
    async with http.post(CHAT, data=big) as response:
        status, kind, message = await error_of(response)
    assert (status, kind) == (413, "request_too_large")
    assert "65536 bytes" in message

    async def chunked() -> object:
        for _ in range(10):
            yield b" " * 10_000

    async with http.post(CHAT, data=chunked()) as response:
        assert response.status == 413


async def test_missing_wrong_and_malformed_credentials(base_url: str) -> None:
    async with aiohttp.ClientSession(base_url) as anonymous:
        async with anonymous.get("/v1/models") as response:
            status, kind, message = await error_of(response)
        assert (status, kind) == (401, "authentication_error")
        assert "surgeflow keys create" in message
        for header in ("Basic abc", "Bearer sf-not-a-key", "Bearer"):
            async with anonymous.get("/v1/models", headers={"Authorization": header}) as response:
                assert response.status == 401
        async with anonymous.get("/healthz") as response:
            assert response.status == 200  # probes need no key


async def test_unknown_route_and_wrong_method(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/nothing-here") as response:
        assert (await error_of(response))[:2] == (404, "not_found")
    async with http.get(CHAT) as response:
        status, _, message = await error_of(response)
        assert status == 405
        assert response.headers["allow"] == "POST"
        assert "try POST" in message
    async with http.get("/v1/runs/run_doesnotexist") as response:
        status, _, message = await error_of(response)
        assert status == 404
        assert "run_doesnotexist" in message


async def test_idempotency_key_too_long(http: aiohttp.ClientSession) -> None:
    headers = {"Idempotency-Key": "k" * 300}
    async with http.post("/v1/workflows/greet/runs", json={"input": {}}, headers=headers) as resp:
        assert resp.status == 400


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=10,
        ).map(
            lambda value: (
                __import__("json").dumps({"model": "sim-small", "messages": value}).encode()
            )
        ),
    )
)
async def test_no_body_makes_the_gateway_fail(base_url: str, body: bytes) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    async with aiohttp.ClientSession(base_url, headers=headers) as http:
        for path in (CHAT, "/v1/workflows/greet/invoke", "/v1/workflows/greet/runs"):
            async with http.post(path, data=body) as response:
                assert response.status < 500, await response.text()
                if response.status >= 400:
                    assert (await response.json())["error"]["message"]
