"""Streams and whole answers: chunks assemble into the answer, and an answer replays as chunks."""

from typing import Any

from surgeflow.models import SimulatedBackend
from surgeflow.models.chunks import ChunkAssembler, replay_chunks
from surgeflow.models.types import ChatChunk, ChatRequest, ChunkChoice, Delta, Message, Usage


def chunk(delta: Delta, finish_reason: str | None = None, **fields: Any) -> ChatChunk:
    choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
    return ChatChunk(id="c1", model="m", created=7, choices=[choice], **fields)


async def test_a_simulated_stream_assembles_into_its_plain_answer() -> None:
    request = ChatRequest(
        model="m",
        messages=[Message(role="user", content="Tell me about shipping times")],
        stream_options={"include_usage": True},
    )
    whole = await SimulatedBackend("a", ttft_ms=0, tokens_per_s=0, seed=3).chat(request)
    assembler = ChunkAssembler()
    async for piece in SimulatedBackend("a", ttft_ms=0, tokens_per_s=0, seed=3).stream(request):
        assembler.add(piece)
    assembled = assembler.response()
    assert assembled is not None
    assert assembled.text == whole.text
    assert assembled.choices[0].finish_reason == whole.choices[0].finish_reason
    assert assembled.usage == whole.usage


def test_tool_calls_are_merged_by_index() -> None:
    assembler = ChunkAssembler()
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
    assembler.add(chunk(Delta(role="assistant", tool_calls=[call])))
    for piece in ('{"city": ', '"Paris"}'):
        assembler.add(chunk(Delta(tool_calls=[{"index": 0, "function": {"arguments": piece}}])))
    assembler.add(chunk(Delta(), "tool_calls"))
    response = assembler.response()
    assert response is not None
    message = response.choices[0].message
    assert message.content is None
    assert message.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert response.choices[0].finish_reason == "tool_calls"


def test_a_stream_without_a_finish_reason_is_not_an_answer() -> None:
    assembler = ChunkAssembler()
    assert assembler.response() is None
    assembler.add(chunk(Delta(role="assistant", content="half an ans")))
    assert assembler.response() is None


def test_an_answer_replays_as_a_content_chunk_a_finish_chunk_and_usage_if_asked() -> None:
    assembler = ChunkAssembler()
    assembler.add(chunk(Delta(role="assistant", content="Hello")))
    assembler.add(chunk(Delta(content=" there"), "stop"))
    assembler.add(ChatChunk(id="c1", model="m", choices=[], usage=Usage(3, 2, 5)))
    response = assembler.response()
    assert response is not None
    plain = replay_chunks(response)
    assert [c.choices[0].delta.content for c in plain] == ["Hello there", None]
    assert [c.choices[0].finish_reason for c in plain] == [None, "stop"]
    assert plain[0].choices[0].delta.role == "assistant"
    with_usage = replay_chunks(response, include_usage=True)
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage == Usage(3, 2, 5)
    replayed = ChunkAssembler()
    for piece in with_usage:
        replayed.add(piece)
    assert replayed.response() == response  # a replay is the same answer again
