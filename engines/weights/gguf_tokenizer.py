"""Tokenizers rebuilt from GGUF metadata (`tokenizer.ggml.*`) with the `tokenizers` library.

Two kinds: byte-level BPE (`gpt2`: llama 3, qwen2, SmolLM2…; merges stored in the file) and
SentencePiece (`llama`: gemma…; no merges, only tokens with scores). For SentencePiece the merges
are derived as Hugging Face's converter does (every split of a token into two vocabulary tokens,
ranked by the merged token's score), with byte fallback and spaces as "▁".
"""

from __future__ import annotations

from typing import Any

# Pre-tokenizer regexes as the upstream tokenizer.json files define them.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# GGUF token types (llama.cpp `llama_token_type`).
_CONTROL = 3
_USER_DEFINED = 4


def build_tokenizer(metadata: dict[str, Any], context_length: int) -> tuple[Any, dict[str, Any]]:
    """A `tokenizers.Tokenizer` and its tokenizer_config.json, from GGUF tokenizer metadata."""
    from engines.weights.gguf import GGUFImportError

    kind = metadata.get("tokenizer.ggml.model")
    tokens: list[str] = list(metadata.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise GGUFImportError("GGUF metadata lacks 'tokenizer.ggml.tokens'")
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(metadata, tokens)
    elif kind == "llama":
        tokenizer = _sentencepiece(metadata, tokens)
    else:
        raise GGUFImportError(
            f"unsupported GGUF tokenizer model {kind!r} (byte-level BPE 'gpt2' or "
            "SentencePiece 'llama')"
        )
    types = list(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    _add_special(tokenizer, tokens, types)
    return tokenizer, _finish(tokenizer, metadata, tokens, context_length, kind == "gpt2")


def _byte_level_bpe(metadata: dict[str, Any], tokens: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre

    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    tokenizer = Tokenizer(
        models.BPE(
            vocab={token: i for i, token in enumerate(tokens)},
            merges=merges,
            ignore_merges=False,
        )
    )
    flavour = metadata.get("tokenizer.ggml.pre", "default")
    byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    if flavour == "smollm":
        tokenizer.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True), byte_level])
    elif flavour in ("qwen2", "llama-bpe", "llama3"):
        pattern = _QWEN2_SPLIT if flavour == "qwen2" else _LLAMA3_SPLIT
        tokenizer.pre_tokenizer = pre.Sequence(
            [
                pre.Split(Regex(pattern), behavior="isolated", invert=False),
                pre.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        if flavour == "qwen2":
            tokenizer.normalizer = normalizers.NFC()
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece(metadata: dict[str, Any], tokens: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = [float(s) for s in metadata.get("tokenizer.ggml.scores", [0.0] * len(tokens))]
    vocab = {token: i for i, token in enumerate(tokens)}
    merges: list[tuple[str, str, float]] = []
    for piece, score in zip(tokens, scores, strict=True):
        splits = [
            (piece[:cut], piece[cut:])
            for cut in range(1, len(piece))
            if piece[:cut] in vocab and piece[cut:] in vocab
        ]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges.extend((left, right, score) for left, right in splits)
    merges.sort(key=lambda merge: merge[2], reverse=True)
    unknown = tokens[int(metadata.get("tokenizer.ggml.unknown_token_id", 0))]
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(left, right) for left, right, _ in merges],
            unk_token=unknown,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    replace = normalizers.Replace(" ", "\u2581")
    if metadata.get("tokenizer.ggml.add_space_prefix", False):
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), replace])
    else:
        tokenizer.normalizer = replace
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return tokenizer


def _add_special(tokenizer: Any, tokens: list[str], types: list[int]) -> None:
    from tokenizers import AddedToken

    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _USER_DEFINED
        ]
    )


def _finish(
    tokenizer: Any,
    metadata: dict[str, Any],
    tokens: list[str],
    context_length: int,
    byte_level: bool,
) -> dict[str, Any]:
    """Set the post-processor (BOS when the model wants one); return tokenizer_config.json."""
    from tokenizers import processors

    def token_of(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    bos, eos = token_of("bos"), token_of("eos")
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    steps: list[Any] = [processors.ByteLevel(trim_offsets=False)] if byte_level else []
    if add_bos and bos is not None:
        steps.append(
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, tokens.index(bos))],
            )
        )
    if steps:
        tokenizer.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": token_of("padding"),
        "unk_token": token_of("unknown"),
    }
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return config
