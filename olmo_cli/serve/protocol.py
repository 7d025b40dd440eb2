"""The request bodies of the OpenAI API that `olmo serve` answers, checked with pydantic, and the errors
in the API's shape (`{"error": {"message", "type", "param", "code"}}`).

Fields the API defines and olmo does not implement are accepted only at their neutral value (a penalty
of 0, no logit bias, no tools), so a request never silently gets something other than it asked for.
Unknown fields are ignored, as the API's own servers ignore them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ApiError",
    "ChatRequest",
    "CompletionRequest",
    "Message",
    "parse_body",
]

MAX_N = 16
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An error answered as the OpenAI API answers one."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)  # an extension (vLLM's): -1 or 0 turn it off
    ignore_eos: bool = False  # an extension (vLLM's): generate max_tokens even past EOS (benchmarks)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return [s for s in stops if s] if stops is not None else None

    @model_validator(mode="after")
    def _neutral(self) -> _Body:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise ValueError(f"{name} is not supported by olmo serve (only 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by olmo serve")
        return self

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    @property
    def top_k_or_none(self) -> int | None:
        return self.top_k if self.top_k is not None and self.top_k > 0 else None


class CompletionRequest(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt is an empty list")
        if isinstance(value, list) and isinstance(value[0], list) and any(not p for p in value):
            raise ValueError("a prompt of token ids is empty")
        return value

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.best_of not in (None, 1, self.n):
            raise ValueError("best_of is not supported by olmo serve (leave it out, or equal to n)")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by olmo serve")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 asks for nothing; with echo it scores the prompt")
        return self


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported by olmo serve")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatRequest:
        if self.tools:
            raise ValueError("tools (function calling) are not supported by olmo serve")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("response_format other than text is not supported by olmo serve")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        for message in self.messages:
            message.text()  # raises for non-text parts
        return self

    @property
    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


_SHAPES = {
    "prompt": "a string, a list of strings, a list of token ids or a list of lists of token ids",
    "stop": "a string or a list of strings",
    "content": "a string or a list of text parts",
}


def _is_type_tag(part: str) -> bool:
    """pydantic names the member of a union it tried in the error's location (`str`, `list[int]`)."""
    return (
        part in ("str", "int", "float", "bool", "list", "dict", "none")
        or "[" in part
        or part.startswith("function-")
    )


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """The request body as `model`, or an ApiError 400 naming the first problem (and its field)."""
    import json

    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(p) for p in first.get("loc", ())]
        field = loc[0] if loc else ""
        if field in _SHAPES and len(loc) > 1 and not loc[1].isdigit():  # a union's members: name them all
            raise ApiError(400, f"{field}: must be {_SHAPES[field]}", param=field) from None
        where = ".".join(p for p in loc if not _is_type_tag(p))
        message = first.get("msg", "invalid value").removeprefix("Value error, ")
        raise ApiError(400, f"{where}: {message}" if where else message, param=where or None) from None
    except ValueError as e:  # a validator's own error outside pydantic's wrapping
        raise ApiError(400, str(e)) from None
