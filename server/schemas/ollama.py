"""Ollama's API bodies (https://github.com/ollama/ollama/blob/main/docs/api.md), read into the
chat request the OpenAI routes run.

Ollama's clients (Open WebUI, Continue's and Zed's Ollama providers, Page Assist, the `ollama`
SDKs) talk to `/api/…`. A `/api/chat` body becomes a `ChatCompletionRequest` body
(`chat_body`), so it shares the chat path's template, tools, grammars, images and limits:
- messages: `images` (bare base64, as Ollama sends them) become image parts after the text;
  `tool_calls` (arguments as objects) get ids, and each `tool` message answers the first call
  not yet answered (of its `tool_name`, where it says one), as chat's `tool_call_id` needs;
  `thinking` is the template's `reasoning_content`;
- `format`: `"json"` is JSON mode, an object a JSON schema;
- `options`: `temperature`, `top_p`, `top_k`, `min_p`, `seed`, `num_predict` (-1: no limit),
  `stop`, `repeat_penalty`, `presence_penalty`, `frequency_penalty`; the rest (`num_ctx`,
  `num_gpu`, `mirostat`, …) tune llama.cpp and change nothing here;
- `think`: the template's `enable_thinking` (and `reasoning_effort` for "low"/"medium"/"high");
- `logprobs`, `top_logprobs`: chat's, answered as Ollama's `logprobs` list.
`stream` defaults to true, as in Ollama. A model named `name:latest` is `name`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from server.schemas.common import Strict

# Options that tune Ollama's runner (context size, GPU layers, threads, …): accepted, no effect.
RUNNER_OPTIONS = frozenset(
    {
        "numa", "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv",
        "logits_all", "vocab_only", "use_mmap", "use_mlock", "embedding_only", "num_thread",
        "num_keep", "tfs_z", "typical_p", "repeat_last_n", "mirostat", "mirostat_tau",
        "mirostat_eta", "penalize_newline",
    }
)  # fmt: skip


# Ollama treats `name` and `name:latest` as one model, and clients add the tag: mlxd's names
# have none, so it is dropped.
OllamaName = Annotated[str, AfterValidator(lambda name: name.removesuffix(":latest"))]

# The chat request's fields as Ollama's request names them, for errors.
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty")
CHAT_PARAMS = {
    **{name: f"options.{name}" for name in (*_SAMPLING, "frequency_penalty")},
    "max_tokens": "options.num_predict",
    "repetition_penalty": "options.repeat_penalty",
    "response_format": "format",
    "response_format.json_schema": "format",
    "response_format.json_schema.schema": "format",
}


class Options(Strict):
    temperature: float | int | None = None
    top_p: float | int | None = None
    top_k: int | None = None
    min_p: float | int | None = None
    seed: int | None = None
    num_predict: int | None = None
    stop: list[str] | str | None = None
    repeat_penalty: float | int | None = None
    presence_penalty: float | int | None = None
    frequency_penalty: float | int | None = None

    def sampling_fields(self) -> dict[str, Any]:
        """The chat request's sampling fields these options set."""
        fields: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "seed": self.seed,
            "stop": self.stop,
            "repetition_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        if self.num_predict is not None and self.num_predict >= 0:
            fields["max_tokens"] = self.num_predict  # -1 (and -2): as long as the context allows
        return {key: value for key, value in fields.items() if value is not None}


class Function(Strict):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(Strict):
    function: Function


class Message(Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class GenerationFields(Strict):
    """What `/api/chat` and `/api/generate` share."""

    model: OllamaName = Field(min_length=1)
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    stream: bool = True
    keep_alive: str | int | float | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def common_body(self) -> dict[str, Any]:
        """The chat request fields of these (model, sampling, format, thinking)."""
        body: dict[str, Any] = {"model": self.model, "stream": False}
        if self.options is not None:
            body |= self.options.sampling_fields()
        if self.format == "json":
            body["response_format"] = {"type": "json_object"}
        elif isinstance(self.format, dict):
            schema = {"name": "response", "schema": self.format}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        if self.logprobs:
            body |= {"logprobs": True, "top_logprobs": self.top_logprobs or 0}
        if self.think is not None:
            kwargs: dict[str, Any] = {"enable_thinking": self.think is not False}
            if isinstance(self.think, str):
                kwargs["reasoning_effort"] = self.think
            body["chat_template_kwargs"] = kwargs
        return body


class ChatRequest(GenerationFields):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    def chat_body(self) -> dict[str, Any]:
        """The `ChatCompletionRequest` body of this request."""
        body = self.common_body()
        body["messages"] = chat_messages(self.messages)
        if self.tools:
            body["tools"] = self.tools
        return body

    def chat_paths(self) -> dict[str, str]:
        """Where the chat messages' image parts came from: `messages[i].images[k]`."""
        return {
            chat: f"messages[{i}].{own}"
            for i, message in enumerate(self.messages)
            for chat, own in _image_paths(i, message).items()
        }


class GenerateRequest(GenerationFields):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    images: list[str] | None = None
    raw: bool = False
    context: list[int] | None = None  # deprecated in Ollama: not read

    def chat_body(self) -> dict[str, Any]:
        """The chat request of a templated (not raw) generate: `system`, then the prompt."""
        messages = [Message(role="system", content=self.system)] if self.system else []
        messages.append(Message(role="user", content=self.prompt, images=self.images))
        return self.common_body() | {"messages": chat_messages(messages)}

    def chat_paths(self) -> dict[str, str]:
        """Where the chat messages came from: `system`, `prompt` and its `images[k]`."""
        user = 1 if self.system else 0
        prompt = Message(role="user", content=self.prompt, images=self.images)
        paths = {f"messages[{user}]": "prompt", **_image_paths(user, prompt)}
        return paths | ({"messages[0]": "system"} if self.system else {})


class EmbedRequest(Strict):
    """`/api/embed`; no `input` (or an empty one) only loads the model, as Ollama answers."""

    model: OllamaName = Field(min_length=1)
    input: str | list[str] | None = None
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None


class LegacyEmbeddingsRequest(Strict):
    """`/api/embeddings`: one `prompt`, one vector; no `prompt` only loads the model."""

    model: OllamaName = Field(min_length=1)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None


class NamedModel(Strict):
    """A body naming one model, in `model` or the older `name` (`/api/show`, `/api/delete`)."""

    model: OllamaName | None = None
    name: OllamaName | None = None  # the older field

    def model_name(self) -> str | None:
        return self.model or self.name


class ShowRequest(NamedModel):
    verbose: bool | None = None


class PullRequest(NamedModel):
    """`/api/pull`: a Hugging Face repo, `ORG/NAME` or a GGUF repo's `ORG/NAME:QUANT`. `insecure`
    is accepted and changes nothing (the hub is `HF_ENDPOINT`'s)."""

    insecure: bool | None = None
    stream: bool = True


def _image_paths(index: int, message: Message) -> dict[str, str]:
    """The chat paths of message `index`'s image parts → `images[k]` (after its text part)."""
    first = 1 if message.content else 0
    return {
        f"messages[{index}].content[{first + k}]": f"images[{k}]"
        for k in range(len(message.images or []))
    }


def chat_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama messages as chat messages (see the module docstring)."""
    chat: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (call id, name) of calls with no result yet
    for message in messages:
        out: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.images:
            # Ollama sends bare base64; the decoder reads the format from the bytes
            # (server/images.py), so the media type here only has to be one it accepts.
            out["content"] = [
                *([{"type": "text", "text": message.content}] if message.content else []),
                *(
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
                    for image in message.images
                ),
            ]
        if message.thinking:
            out["reasoning_content"] = message.thinking
        if message.tool_calls:
            calls: list[dict[str, Any]] = []
            for call in message.tool_calls:
                call_id = f"call_{len(chat)}_{len(calls)}"
                unanswered.append((call_id, call.function.name))
                arguments = call.function.arguments
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": arguments},
                    }
                )
            out["tool_calls"] = calls
        if message.role == "tool":
            match = next(
                (c for c in unanswered if message.tool_name in (None, c[1])),
                unanswered[0] if unanswered else None,
            )
            if match is not None:
                unanswered.remove(match)
            out["tool_call_id"] = match[0] if match else f"call_unmatched_{len(chat)}"
        chat.append(out)
    return chat
