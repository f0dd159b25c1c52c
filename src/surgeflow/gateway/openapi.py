"""The gateway's OpenAPI 3.1 document, built from the msgspec types that decode requests."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import msgspec

from surgeflow import __version__
from surgeflow.models.types import ChatChunk, ChatRequest, ChatResponse, ModelList

if TYPE_CHECKING:
    from surgeflow.service import Service

_REF = "#/components/schemas/{name}"


@cache
def _components() -> tuple[dict[str, Any], ...]:
    schemas, components = msgspec.json.schema_components(
        [ChatRequest, ChatResponse, ChatChunk, ModelList], ref_template=_REF
    )
    return (*schemas, components)


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="Error")}}},
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def _query(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def openapi_document(service: Service) -> dict[str, Any]:
    chat_req, chat_resp, _, model_list, components = _components()
    components = dict(components)
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    run_schema = {"type": "object", "description": "a workflow run (see GET /v1/runs/{id})"}
    bad = {"400": _error("malformed JSON"), "401": _error("missing or unknown API key")}
    bad |= {"413": _error("body over the size limit"), "422": _error("invalid body")}
    run_id = [{"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    input_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"input": {"type": "object"}},
                    "description": "the workflow's input; its schema is in GET /v1/workflows",
                }
            }
        },
    }
    cache_status = {
        "X-Surgeflow-Cache": {
            "description": "how the cache answered (semantic: a prompt that means the same)",
            "schema": {"type": "string", "enum": ["hit", "stale", "semantic", "miss", "bypass"]},
        }
    }
    answered = _json(chat_resp) | {"headers": cache_status}
    answered["content"]["text/event-stream"] = {
        "schema": {"type": "string", "description": "chunks (ChatChunk) as server-sent events"}
    }
    cache_query = [
        _query("key", "delete the entry with this exact key"),
        _query("tag", "delete every entry stored with this tag"),
        _query("prefix", "delete every entry whose key starts with this"),
    ]
    paths: dict[str, Any] = {
        "/v1/chat/completions": {
            "post": {
                "summary": "Create a chat completion (OpenAI-compatible; stream with SSE)",
                "parameters": [
                    _header("Cache-Control", "'no-store' or 'no-cache': skip the cache"),
                    _header("X-Surgeflow-Cache", "'on': cache this request even if it samples"),
                    _header(
                        "X-Surgeflow-Cache-Tags",
                        "comma-separated tags (at most 8, each 1-64 of A-Za-z0-9._:-) to "
                        "invalidate the stored answer by",
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": chat_req}},
                },
                "responses": {
                    "200": answered,
                    **bad,
                    "400": _error("malformed JSON or a bad X-Surgeflow-Cache-Tags header"),
                    "404": _error("unknown model"),
                },
            }
        },
        "/v1/models": {"get": {"summary": "List models", "responses": {"200": _json(model_list)}}},
        "/v1/workflows": {
            "get": {
                "summary": "List workflows and their input schemas",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/v1/workflows/{name}/invoke": {
            "post": {
                "summary": "Run a workflow inline, bounded by a timeout",
                "parameters": name,
                "requestBody": input_body,
                "responses": {
                    "200": _json({"type": "object"}),
                    **bad,
                    "404": _error("unknown workflow"),
                    "504": _error("timed out"),
                },
            }
        },
        "/v1/workflows/{name}/runs": {
            "post": {
                "summary": "Submit a durable run (Idempotency-Key header: same key, same run)",
                "parameters": [
                    *name,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": input_body,
                "responses": {
                    "202": _json(run_schema, "queued"),
                    "200": _json(run_schema, "existing run"),
                    **bad,
                },
            }
        },
        "/v1/runs/{run_id}": {
            "get": {
                "summary": "Read a run",
                "parameters": run_id,
                "responses": {"200": _json(run_schema), "404": _error("unknown run")},
            },
            "delete": {
                "summary": "Cancel a run",
                "parameters": run_id,
                "responses": {"202": _json(run_schema), "404": _error("unknown run")},
            },
        },
        "/v1/runs/{run_id}/events": {
            "get": {
                "summary": "Follow a run's events (SSE: past events, then live ones)",
                "parameters": run_id,
                "responses": {
                    "200": {"description": "event stream", "content": {"text/event-stream": {}}}
                },
            }
        },
        "/v1/admin/cache": {
            "delete": {
                "summary": "Invalidate cached answers (admin key): by key, tag or prefix, or all",
                "parameters": cache_query,
                "responses": {
                    "200": _json({"type": "object"}),
                    "400": _error("more than one of key, tag and prefix"),
                    "403": _error("not an admin key"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (no key: do not expose publicly)",
                "security": [],
                "responses": {
                    "200": {"description": "text exposition", "content": {"text/plain": {}}}
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "security": [],
                "responses": {"200": _json({"type": "object"})},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "surgeflow gateway", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}] if service.settings.auth.enabled else [],
    }
