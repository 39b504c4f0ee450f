"""Request bodies of `POST /v1/embeddings` and `POST /v1/rerank`.

Embeddings: spec `CreateEmbeddingRequest` (../shared/openai/openapi.yaml) — `input` as a string,
strings, token ids or lists of token ids; `encoding_format`; `dimensions`; `user` (ignored).
`truncate` is an extension (as in Hugging Face's TEI): cut over-long inputs to the model's
length instead of refusing them. Voyage's client posts the same body with its own names:
`truncation` (`truncate`), `output_dimension` (`dimensions`) and `output_dtype`, of which only
`float` is served (its client decodes base64 as the type it asked for).

Rerank: the Cohere / Jina shape that Open WebUI, LlamaIndex and LangChain send — `query`,
`documents` as strings or `{"text": ...}` objects, `top_n`, `return_documents` — or Voyage's,
which names `top_n` `top_k` and also sends `truncation` (false: a document too long for the
model is refused, as Voyage's API refuses it, instead of cut).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from server.schemas.common import Strict

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
MAX_DOCUMENTS = 1000  # Cohere's limit on documents per rerank request

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingsRequest(Strict):
    input: EmbeddingInput
    model: str = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    truncate: bool | None = None
    # Voyage's names
    truncation: bool | None = None
    output_dimension: int | None = Field(None, ge=1)
    output_dtype: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: EmbeddingInput) -> EmbeddingInput:
        items: list[str] | list[int] | list[list[int]] = (
            [value] if isinstance(value, str) else value
        )
        if not items:
            raise ValueError("input must not be empty")
        if len(items) > MAX_INPUTS and not isinstance(items[0], int):
            raise ValueError(f"input may hold at most {MAX_INPUTS} items, got {len(items)}")
        for index, item in enumerate(items):
            if isinstance(item, str | list) and not item:
                raise ValueError(f"input[{index}] is empty")
            tokens = [] if isinstance(item, str) else item if isinstance(item, list) else [item]
            if tokens and min(tokens) < 0:
                raise ValueError("token ids must not be negative")
        return value

    @field_validator("output_dtype")
    @classmethod
    def _float_only(cls, value: str | None) -> str | None:
        if value not in (None, "float"):
            raise ValueError(f"'{value}' embeddings are not served: leave it out or send 'float'")
        return value

    def cut(self) -> bool:
        """Whether over-long inputs are cut: `truncate`, else Voyage's `truncation`; else not."""
        return bool(self.truncate if self.truncate is not None else self.truncation)

    def cut_by(self) -> str:
        """What asks for cutting, in the body's own words (Voyage's or ours)."""
        voyage = self.truncate is None and self.truncation is not None
        return '"truncation": true' if voyage else '"truncate": true'

    def shortened(self) -> tuple[int | None, str]:
        """The dimensions asked for, and the field that asked (`dimensions` wins)."""
        if self.dimensions is not None or self.output_dimension is None:
            return self.dimensions, "dimensions"
        return self.output_dimension, "output_dimension"

    def items(self) -> list[str | list[int]]:
        """One entry per input: a text, or the token ids of one input."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [[int(token) for token in value]]
        return list(value)  # type: ignore[arg-type]


IGNORED_EMBEDDING_FIELDS = ("user",)


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str


def _document(value: Any) -> Any:
    """A document is a string or an object with a string `text`; said so, where pydantic would
    report only the union's first branch ("Input should be a valid string")."""
    if isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("text"), str)):
        return value
    raise ValueError("a document is a string or an object with a string 'text'")


class RerankRequest(Strict):
    model: str = Field(min_length=1)
    query: str = Field(min_length=1)
    documents: list[Annotated[str | RerankDocument, BeforeValidator(_document)]] = Field(
        min_length=1, max_length=MAX_DOCUMENTS
    )
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    # Voyage's names: `top_k` for `top_n`; `truncation`
    top_k: int | None = Field(None, ge=1)
    truncation: bool | None = None

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def cut(self) -> bool:
        """Whether documents too long for the model are cut to fit (Voyage's default), or
        refused: only Voyage's `truncation: false` refuses them."""
        return self.truncation is not False

    def voyage(self) -> bool:
        """Whether the body is Voyage's: its client always sends `top_k` (null when not set),
        which Cohere's and Jina's shape do not have."""
        return "top_k" in self.model_fields_set

    def count(self) -> int | None:
        """How many results to return (`top_n`, or Voyage's `top_k`); None: all."""
        return self.top_n if self.top_n is not None else self.top_k


# Cohere fields that change nothing here: documents are never split into chunks, and objects
# are ranked by their `text`.
IGNORED_RERANK_FIELDS = ("max_chunks_per_doc", "max_tokens_per_doc", "rank_fields")
