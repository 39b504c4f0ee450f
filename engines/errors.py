"""Errors engines raise or deliver. The HTTP edge maps each class to a status in one table
(server/errors.py); engines never know about status codes."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: `param` names the request field at fault, when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ModelNotFound(EngineError):
    """No model of that name or alias is available."""


class ContextTooLong(EngineError):
    """The prompt (plus what must be generated) does not fit the model's context. The counts,
    where the raiser knows them, let an edge word the error as its API does: `max_tokens` is
    None when the prompt alone is too long."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        prompt_tokens: int | None = None,
        limit: int | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__(message, param)
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        self.max_tokens = max_tokens


class InvalidRequest(EngineError):
    """The request cannot be served by this model as asked (e.g. a template cannot render it)."""


class NoChatTemplate(InvalidRequest):
    """The model has no chat template, so chat messages cannot be rendered for it."""

    def __init__(self) -> None:
        super().__init__("this model has no chat template", param="messages")


class WrongModelKind(InvalidRequest):
    """The model exists but is of another kind than the route serves (a speech model asked to
    chat, say)."""

    def __init__(self, model: str, noun: str, wanted_noun: str) -> None:
        super().__init__(f"'{model}' is {noun}, not {wanted_noun}", param="model")


class ModelInUse(EngineError):
    """The model is loading, unloading or serving requests, so it cannot be removed now."""


class KVBudgetExceeded(EngineError):
    """The request could never fit the engine's KV memory budget, even running alone."""


class Overloaded(EngineError):
    """The engine's waiting queue is full: retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineUnavailable(EngineError):
    """The engine is not running (still loading, stopped, or failed to load)."""


class ShuttingDown(EngineUnavailable):
    """The server is shutting down: it takes no new work, and work still running when its drain
    period ends is stopped with this. Worth retrying (this server once restarted, or another)."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineFailed(EngineError):
    """The engine hit an internal error while serving the request."""
