"""Request body of Cohere's embed API: `POST /v2/embed` (https://docs.cohere.com/reference/embed)
and v1's `POST /v1/embed` (https://docs.cohere.com/v1/reference/embed), which the `cohere`
client's `ClientV2.embed` and `Client.embed` post.

`texts` (1–96 strings, Cohere's limit a call; its v1 client sends batches of 96), `model`,
`input_type` (checked, then ignored: mlxd adds no query or document prompt), `embedding_types`
(served: `float`, `binary` and `ubinary` — the signs packed eight to a byte, as Cohere packs
them — and `base64`, the float32 bytes; `int8` and `uint8` are Cohere's own calibrated
quantisation, which a model here does not have: a 400 naming what is served), `truncate`
(`END`, Cohere's default: an over-long text keeps its start; `START`: its end; `NONE`: refused)
and `output_dimension` (Matryoshka models only, as `dimensions` on /v1/embeddings). Images
(`images`, `inputs`) and `max_tokens` are refused, not ignored: they would change what is
embedded. `priority` is ignored (named in `x-mlxd-ignored-fields`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from server.schemas.common import Strict

MAX_TEXTS = 96

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
SERVED_TYPES = ("float", "binary", "ubinary", "base64")
InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]


class CohereEmbedRequest(Strict):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)
    model: str = Field(min_length=1)
    input_type: InputType | None = None
    embedding_types: list[EmbeddingType] | None = Field(None, min_length=1)
    truncate: Literal["NONE", "START", "END"] = "END"
    output_dimension: int | None = Field(None, ge=1)
    images: list[Any] | None = None
    inputs: list[Any] | None = None
    max_tokens: int | None = None
    priority: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _inputs_are_no_texts(cls, body: Any) -> Any:
        """`inputs` sent in place of `texts` is refused as what it is, not as texts missing."""
        if isinstance(body, dict) and "texts" not in body and body.get("inputs"):
            raise ValueError("'inputs' are not embedded here, only texts: send them in 'texts'")
        return body

    @field_validator("texts")
    @classmethod
    def _no_empty_text(cls, texts: list[str]) -> list[str]:
        for index, text in enumerate(texts):
            if not text:
                raise ValueError(f"texts[{index}] is empty")
        return texts

    @field_validator("embedding_types")
    @classmethod
    def _served_types(cls, kinds: list[str] | None) -> list[str] | None:
        for kind in kinds or ():
            if kind not in SERVED_TYPES:
                raise ValueError(
                    f"'{kind}' embeddings are not served (Cohere's int8 and uint8 are its own "
                    f"calibrated quantisation); served: {', '.join(SERVED_TYPES)}"
                )
        return kinds

    @field_validator("images", "inputs")
    @classmethod
    def _texts_only(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("only texts are embedded here: send them in 'texts'")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _no_max_tokens(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("not served: texts are cut to the model's own length (see 'truncate')")
        return value


IGNORED_COHERE_FIELDS = ("input_type", "priority")
