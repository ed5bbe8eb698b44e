"""What ollama-api.md promises, as tables: the route table (§2) and the error catalogue
(§3.7, §4.3, §5, §6, §9.1, §12 items 5 and 6). ``test_routes.py`` walks them against a
running Herd; ``docs/compatibility.md`` is checked against ``UNSERVED``.

A row that departs from ollama-api.md on purpose says why in ``deviation`` (the reason
docs/compatibility.md gives). Model names: ``fake-tools`` has every capability,
``fake-plain`` only completion, ``fake-embed`` only embedding (see tests/clients/cluster.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.clients.cluster import PLAIN_MODEL, TOOLS_MODEL

USER = [{"role": "user", "content": "hi"}]
BAD_NAME = "bad name!"
DIGEST = "sha256:" + "0" * 64
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
GO_DECODER = "Go decoder texts are not reproduced; the status is"


@dataclass(frozen=True)
class Served:
    """A route of §2 and what a minimal valid request to it gets."""

    route: str  # "METHOD /path"
    body: Any = None
    #: How the answer is framed: "json", "ndjson" (streamed), "text", "empty".
    framing: str = "json"
    #: Keys the JSON body must have.
    keys: frozenset[str] = frozenset()

    @property
    def method(self) -> str:
        return self.route.split(" ")[0]

    @property
    def path(self) -> str:
        return self.route.split(" ")[1]


def _keys(*names: str) -> frozenset[str]:
    return frozenset(names)


# fmt: off
SERVED: list[Served] = [
    Served("GET /", framing="text"),
    Served("HEAD /", framing="empty"),
    Served("GET /api/version", keys=_keys("version")),
    Served("HEAD /api/version", framing="empty"),
    Served("GET /api/tags", keys=_keys("models")),
    Served("HEAD /api/tags", framing="empty"),
    Served("POST /api/show", {"model": TOOLS_MODEL}, keys=_keys("model_info")),
    # copy and delete work on a copy made (or removed) around the request by the test
    Served("POST /api/copy", {"source": TOOLS_MODEL}, framing="empty"),
    Served("DELETE /api/delete", {}, framing="empty"),
    Served("GET /api/ps", keys=_keys("models")),
    Served("POST /api/generate", {"model": TOOLS_MODEL, "prompt": "hi"}, framing="ndjson"),
    Served("POST /api/chat", {"model": TOOLS_MODEL, "messages": USER}, framing="ndjson"),
    Served("POST /api/embed", {"model": TOOLS_MODEL, "input": "hi"},
           keys=_keys("model", "embeddings")),
    Served("POST /api/embeddings", {"model": TOOLS_MODEL, "prompt": "hi"},
           keys=_keys("embedding")),
    Served("POST /v1/chat/completions", {"model": TOOLS_MODEL, "messages": USER},
           keys=_keys("id", "object", "created", "model", "choices", "usage")),
    Served("POST /v1/completions", {"model": TOOLS_MODEL, "prompt": "hi"},
           keys=_keys("id", "object", "created", "model", "choices", "usage")),
    Served("POST /v1/embeddings", {"model": TOOLS_MODEL, "input": "hi"},
           keys=_keys("object", "data", "model", "usage")),
    Served("GET /v1/models", keys=_keys("object", "data")),
    Served(f"GET /v1/models/{TOOLS_MODEL}", keys=_keys("id", "object", "created", "owned_by")),
]

#: Routes of §2 Herd does not serve, and why (docs/compatibility.md shows these reasons).
UNSERVED: dict[str, str] = {
    "GET /api/status":        "no ollama.com cloud integration",
    "POST /api/me":           "no ollama.com accounts",
    "POST /api/signout":      "no ollama.com accounts",
    "DELETE /api/user/keys/:encodedKey": "no ollama.com accounts",
    "POST /api/experimental/web_search": "cloud proxy, experimental in Ollama",
    "POST /api/experimental/web_fetch":  "cloud proxy, experimental in Ollama",
    "GET /api/experimental/model-recommendations": "cloud recommendations, experimental",
    "POST /v1/responses":     "OpenAI Responses API not implemented; use /v1/chat/completions",
    "POST /v1/audio/transcriptions": "no audio models",
    "POST /v1/messages":      "Anthropic Messages API not implemented",
}
#: The parameters the unserved routes are called with.
PATH_PARAMS = {":digest": DIGEST, ":encodedKey": "abc"}

#: A method a served path does not have → 405 ``405 method not allowed`` in plain text.
WRONG_METHOD: list[str] = [
    "POST /", "POST /api/version", "POST /api/tags", "DELETE /api/tags", "GET /api/show",
    "GET /api/delete", "POST /api/delete", "GET /api/copy", "POST /api/ps",
    "GET /api/generate", "PUT /api/generate", "GET /api/chat", "DELETE /api/chat",
    "GET /api/embed", "GET /api/embeddings", "GET /v1/chat/completions", "GET /v1/completions",
    "GET /v1/embeddings", "POST /v1/models", f"DELETE /v1/models/{TOOLS_MODEL}",
]
# fmt: on


@dataclass(frozen=True)
class Case:
    """One condition of the error catalogue and the answer it gets."""

    id: str
    route: str  # "METHOD /path"
    #: A JSON body, or raw bytes sent as they are.
    body: Any
    status: int
    #: The exact error text (or its start, see ``prefix``); None: the status is the contract.
    text: str | None = None
    #: Where ollama-api.md documents it.
    section: str = ""
    prefix: bool = False
    #: Why Herd departs from ollama-api.md here (as docs/compatibility.md says), if it does.
    deviation: str = ""

    @property
    def method(self) -> str:
        return self.route.split(" ")[0]

    @property
    def path(self) -> str:
        return self.route.split(" ")[1]


def gen(**body: Any) -> dict[str, Any]:
    return {"model": TOOLS_MODEL, "prompt": "x", **body}


def chat(**body: Any) -> dict[str, Any]:
    return {"model": TOOLS_MODEL, "messages": USER, **body}


def _parts(*parts: dict[str, Any]) -> dict[str, Any]:
    return chat(messages=[{"role": "user", "content": list(parts)}])


_BAD_TOOL_CALL = [
    *USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "[1]"}},
        ],
    },
]  # fmt: skip
_NO_TOOLS = f"registry.ollama.ai/library/{PLAIN_MODEL} does not support tools"
_NOT_PULLED = 'model "nope" not found, try pulling it first'
_G, _C = "POST /api/generate", "POST /api/chat"
#: Herd's refusals of inputs that could hurt a worker or the cluster (docs/compatibility.md).
_LIMITS = "input limits: Ollama accepts this"
_DEEP: Any = {"type": "object"}
for _ in range(70):
    _DEEP = {"type": "object", "properties": {"a": _DEEP}}
_DUPLICATE_MODEL = f'{{"model": "{TOOLS_MODEL}", "prompt": "x", "model": "{TOOLS_MODEL}"}}'.encode()
_E, _ES = "POST /api/embed", "POST /api/embeddings"
_V1C, _V1P, _V1E = "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings"

# fmt: off
NATIVE: list[Case] = [
    # §3.7 generate; no `stream` (the streaming default): an early error must be a real status
    Case("generate-empty-body", _G, b"", 400, "missing request body", "§3.7"),
    Case("generate-malformed-json", _G, b"{x", 400, None, "§3.7", deviation=GO_DECODER),
    Case("generate-wrong-field-type", _G, {"model": TOOLS_MODEL, "prompt": 1}, 400, None, "§3.7",
         deviation=GO_DECODER),
    Case("generate-empty-model", _G, {"model": ""}, 404, "model '' not found", "§3.7 §12.5"),
    Case("generate-no-model", _G, {"prompt": "x"}, 404, "model '' not found", "§3.7 §12.5"),
    Case("generate-null-body", _G, b"null", 404, "model '' not found", "§3.7"),
    Case("generate-invalid-name", _G, gen(model=BAD_NAME), 400, "invalid model name", "§3.7"),
    Case("generate-not-found", _G, gen(model="nope:1b"), 404, "model 'nope:1b' not found",
         "§3.7 §12.6"),
    Case("generate-not-found-as-sent", _G, gen(model="Nope"), 404, "model 'Nope' not found",
         "§3.7 §12.6"),
    Case("generate-no-completion", _G, gen(model="fake-embed"), 400,
         '"fake-embed" does not support generate', "§3.7"),
    Case("generate-think-unsupported", _G, gen(model="fake-plain", think=True), 400,
         '"fake-plain" does not support thinking', "§3.7"),
    Case("generate-think-false-ok", _G, gen(model="fake-plain", think=False, stream=False), 200,
         None, "§4.4"),
    Case("generate-think-bad-value", _G, gen(think="x"), 400,
         'invalid think value: "x" (must be "high", "medium", "low", "max", true, or false)',
         "§3.1"),
    Case("generate-suffix-without-insert", _G, gen(model="fake-plain", suffix="y"), 400,
         f"registry.ollama.ai/library/{PLAIN_MODEL} does not support insert", "§3.1"),
    Case("generate-suffix-with-insert", _G, gen(suffix="y", stream=False), 200, None, "§3.1"),
    Case("generate-raw-with-system", _G, gen(raw=True, system="s"), 400,
         "raw mode does not support template, system, or context", "§3.1"),
    Case("generate-top-logprobs-range", _G, gen(logprobs=True, top_logprobs=21), 400,
         "top_logprobs must be between 0 and 20", "§3.1"),
    Case("generate-keep-alive-bare-number-string", _G, gen(keep_alive="300"), 400,
         'time: missing unit in duration "300"', "§3.5 §12.16"),
    Case("generate-keep-alive-minus-one-string", _G, gen(keep_alive="-1"), 400,
         'time: missing unit in duration "-1"', "§3.5 §12.16"),
    Case("generate-keep-alive-other-type", _G, gen(keep_alive=[1]), 400, "Unsupported type: '",
         "§3.5", prefix=True),
    Case("generate-format-invalid", _G, gen(format="xml", stream=False), 400,
         # Go's %q of the raw JSON `"xml"`, quotes included
         'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object', "§3.1",
         deviation="a format of the wrong kind is 400 (bad input), not Ollama's 500"),
    Case("generate-format-false", _G, gen(format=False), 400,
         'invalid format: "false"; expected "json" or a valid JSON Schema object', "§3.1",
         deviation="a format of the wrong kind is 400 (bad input), not Ollama's 500"),
    Case("generate-format-nested-too-deep", _G, gen(format=_DEEP), 400, "exceeded max depth",
         "§3.1", prefix=True, deviation=_LIMITS),
    Case("generate-context-not-a-token", _G, gen(context=[-1]), 400,
         "invalid context: token id -1 is not in the model's vocabulary", "§3.1",
         deviation=_LIMITS),
    Case("generate-duplicate-key", _G, _DUPLICATE_MODEL, 400, 'json: duplicate key "model"',
         "§1", deviation=_LIMITS),
    Case("generate-bad-base64-image", _G, gen(images=["!!!"]), 400,
         "illegal base64 data at input byte", "§3.1", prefix=True),
    Case("generate-option-wrong-type", _G, gen(options={"temperature": "hot"}), 400,
         'option "temperature" must be of type float32', "§3.6 §12.7",
         deviation="wrong option types are 400 (bad input), not Ollama's 500"),
    Case("generate-prompt-too-long-without-shift", _G, gen(prompt="word " * 20000, shift=False),
         400, "the prompt is longer than the context length currently available to the model; "
         "shorten the prompt, adjust the context length in settings, or use a model with a "
         "longer context length", "§3.7"),
    Case("generate-legacy-options-accepted", _G,
         gen(stream=False, options={"numa": False, "penalize_newline": True, "mirostat": 0}),
         200, None, "§3.6"),
    # §4.3 chat
    Case("chat-empty-body", _C, b"", 400, "missing request body", "§4.3"),
    Case("chat-empty-model", _C, chat(model=""), 400, "model is required", "§4.1 §12.5"),
    Case("chat-not-found", _C, chat(model="nope"), 404, "model 'nope' not found", "§4.3 §12.6"),
    Case("chat-invalid-name", _C, chat(model=BAD_NAME), 400, "invalid model name", "§4.3"),
    Case("chat-no-completion", _C, chat(model="fake-embed"), 400,
         '"fake-embed" does not support chat', "§4.3"),
    Case("chat-tools-unsupported", _C, chat(model="fake-plain", tools=[TOOL]), 400, _NO_TOOLS,
         "§4.3"),
    Case("chat-empty-tools-ok", _C, chat(model="fake-plain", tools=[], stream=False), 200, None,
         "§4.1"),
    Case("chat-think-unsupported", _C, chat(model="fake-plain", think=True), 400,
         '"fake-plain" does not support thinking', "§4.4"),
    Case("chat-keep-alive-bare-number-string", _C, chat(keep_alive="300"), 400,
         'time: missing unit in duration "300"', "§3.5"),
    # §5 embeddings
    Case("embed-empty-model", _E, {"model": "", "input": "x"}, 404, "model '' not found",
         "§5.1 §12.5"),
    Case("embed-not-found", _E, {"model": "nope", "input": "x"}, 404, _NOT_PULLED, "§5.1 §12.6"),
    Case("embed-input-type", _E, {"model": TOOLS_MODEL, "input": 3}, 400, "invalid input type",
         "§5.1"),
    Case("embed-any-model", _E, {"model": "fake-plain", "input": "x"}, 200, None, "§5.1"),
    Case("embed-too-long-no-truncate", _E,
         {"model": TOOLS_MODEL, "input": "word " * 20000, "truncate": False}, 400,
         "the input length exceeds the context length", "§5.1"),
    Case("embeddings-empty-model", _ES, {"model": "", "prompt": "x"}, 400, "model is required",
         "§5.2 §12.5"),
    Case("embeddings-not-found", _ES, {"model": "nope", "prompt": "x"}, 404, _NOT_PULLED,
         "§5.2 §12.6"),
    # §6 model management
    Case("show-empty-model", "POST /api/show", {"model": ""}, 400, "model is required",
         "§6.2 §12.5"),
    Case("show-not-found", "POST /api/show", {"model": "nope"}, 404,
         "model 'nope:latest' not found", "§6.2 §12.6"),
    Case("show-invalid-name", "POST /api/show", {"model": BAD_NAME}, 400, "invalid model name",
         "§6.2"),
    Case("show-deprecated-name-field", "POST /api/show", {"name": TOOLS_MODEL}, 200, None,
         "§6.2"),
    Case("copy-invalid-source", "POST /api/copy", {"source": BAD_NAME, "destination": "x"}, 400,
         f'source "{BAD_NAME}" is invalid', "§6.8"),
    Case("copy-invalid-destination", "POST /api/copy",
         {"source": TOOLS_MODEL, "destination": BAD_NAME}, 400,
         f'destination "{BAD_NAME}" is invalid', "§6.8"),
    Case("copy-source-missing", "POST /api/copy", {"source": "nope", "destination": "x"}, 404,
         'model "nope" not found', "§6.8 §12.6"),
    Case("push-empty-model", "POST /api/push", {"model": ""}, 400, "model is required", "§6.5"),
    Case("push-invalid-name", "POST /api/push", {"model": BAD_NAME}, 400, "invalid model name",
         "§6.5"),
    Case("delete-not-found", "DELETE /api/delete", {"model": "nope"}, 404,
         "model 'nope' not found", "§6.9 §12.6"),
    Case("delete-invalid-name", "DELETE /api/delete", {"model": BAD_NAME}, 400,
         f'name "{BAD_NAME}" is invalid', "§6.9"),
    Case("delete-empty-model", "DELETE /api/delete", {"model": ""}, 400, "model is required",
         "§6.9"),
    # the last "model" would hide a served model; Go and orjson take the last key
    Case("delete-duplicate-key", "DELETE /api/delete",
         f'{{"model": "nope", "model": "{TOOLS_MODEL}"}}'.encode(), 400,
         'json: duplicate key "model"', "§6.9", deviation=_LIMITS),
]

#: §9.1: every /v1 error is {"error": {"message", "type", "param": null, "code": null}}.
OPENAI: list[Case] = [
    Case("v1-chat-not-found", _V1C, chat(model="nope"), 404, "model 'nope' not found", "§9.1"),
    Case("v1-chat-empty-model", _V1C, chat(model=""), 400, "model is required", "§9.1 §12.5"),
    Case("v1-chat-empty-body", _V1C, b"", 400, None, "§9.1", deviation=GO_DECODER),
    Case("v1-chat-no-messages", _V1C, chat(messages=[]), 400, "[] is too short - 'messages'",
         "§9.2"),
    Case("v1-chat-image-url", _V1C,
         _parts({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}), 400,
         "image URLs are not currently supported, please use base64 encoded data instead",
         "§9.2"),
    Case("v1-chat-bad-part", _V1C, _parts({"type": "video", "video": "x"}), 400,
         "invalid message format", "§9.2"),
    Case("v1-chat-null-content", _V1C, chat(messages=[{"role": "user", "content": None}]), 400,
         "invalid message content type: <nil>", "§9.2"),
    Case("v1-chat-tool-args-not-object", _V1C, chat(messages=_BAD_TOOL_CALL), 400,
         "invalid tool call arguments", "§9.2"),
    Case("v1-chat-bad-reasoning", _V1C, chat(reasoning_effort="bogus"), 400,
         "invalid reasoning value", "§9.2", prefix=True),
    Case("v1-chat-tools-unsupported", _V1C, chat(model="fake-plain", tools=[TOOL]), 400,
         _NO_TOOLS, "§9.1"),
    Case("v1-completions-not-found", _V1P, {"model": "nope", "prompt": "x"}, 404,
         "model 'nope' not found", "§9.3"),
    Case("v1-completions-prompt-array", _V1P, {"model": TOOLS_MODEL, "prompt": ["a", "b"]}, 400,
         None, "§9.3", deviation=GO_DECODER),
    Case("v1-completions-bad-stop", _V1P, {"model": TOOLS_MODEL, "prompt": "x", "stop": [1]},
         400, "invalid type for 'stop' field", "§9.3", prefix=True),
    Case("v1-embeddings-not-found", _V1E, {"model": "nope", "input": "x"}, 404, _NOT_PULLED,
         "§9.4"),
    Case("v1-embeddings-empty-input", _V1E, {"model": TOOLS_MODEL, "input": []}, 400,
         "invalid input", "§9.4"),
    Case("v1-embeddings-null-input", _V1E, {"model": TOOLS_MODEL, "input": None}, 400,
         "invalid input", "§9.4"),
    Case("v1-embeddings-bad-encoding", _V1E,
         {"model": TOOLS_MODEL, "input": "x", "encoding_format": "bogus"}, 400,
         "Invalid value for 'encoding_format' = bogus. Supported values: ['float', 'base64'].",
         "§9.4"),
    Case("v1-models-not-found", "GET /v1/models/nope", None, 404,
         "model 'nope:latest' not found", "§9.5"),
]
# fmt: on

#: §9.1: the OpenAI error ``type`` by status; anything else is ``api_error``.
OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
