"""The unmodified ``openai`` package works against the gateway: chat, streaming, models, errors."""

import openai
import pytest

from tests.gateway.conftest import API_KEY


@pytest.fixture
async def client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0)


async def test_chat_completion(client: openai.AsyncOpenAI) -> None:
    async with client:
        completion = await client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "How do refunds work?"}]
        )
    assert completion.object == "chat.completion"
    assert completion.model == "sim-small"
    text = completion.choices[0].message.content
    assert text
    assert "refunds" in text.lower()
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


async def test_streaming_reassembles_to_the_same_answer(client: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me about shipping times"}]
    async with client:
        whole = await client.chat.completions.create(model="sim-small", messages=messages)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model="sim-small",
            messages=messages,
            stream=True,  # type: ignore[arg-type]
        )
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert len(pieces) > 3
    assert "".join(pieces) == whole.choices[0].message.content


async def test_models_are_listed(client: openai.AsyncOpenAI) -> None:
    async with client:
        models = [model.id async for model in client.models.list()]
    assert models == ["sim-small"]


async def test_unknown_model_is_a_not_found_error(client: openai.AsyncOpenAI) -> None:
    async with client:
        with pytest.raises(openai.NotFoundError, match="sim-small"):
            await client.chat.completions.create(
                model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
            )


async def test_wrong_key_is_an_authentication_error(base_url: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="sf-wrong", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError, match="unknown or revoked"):
            await client.models.list()
