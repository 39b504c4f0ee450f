"""EmbedEngine on tiny random checkpoints, on its real engine thread, against references:
BERT (mean pooling, normalised) and XLM-R (cls pooling, shifted positions) against an
independent numpy forward pass; a BERT cross-encoder's logits on (query, document) pairs against
numpy; a Qwen2-shaped decoder embedder (last token) against mlx-lm's own model run one input at
a time, unpadded. Inputs of different lengths share padded passes, so each check also shows that
padding and batching change nothing. Then the scheduling: a single input is not starved by a
large request, and a cancelled request leaves."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from engines.bridge import RequestStream
from engines.embed.engine import EmbedEngine
from engines.types import EmbeddingLimits, EmbeddingRequest, EmbeddingsDone
from tests.engines import modernbert_reference
from tests.servers import wait_until
from tests.tiny import save_model_dir, tiny_model

WORDS = [
    "a",
    "man",
    "is",
    "eating",
    "food",
    "bread",
    "horse",
    "the",
    "riding",
    "girl",
    "baby",
    "carrying",
    "piece",
    "of",
]
TEXTS = ["A man is eating food.", "the horse", "a girl is carrying a baby . " * 3, "bread"]
BERT = {
    "model_type": "bert",
    "architectures": ["BertModel"],
    "vocab_size": 4 + len(WORDS) + 1,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def _tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS, "."])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return tokenizer


def _random_bert(config: dict[str, Any], labels: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    weights: dict[str, np.ndarray] = {}

    def linear(name: str, d_out: int, d_in: int) -> None:
        weights[f"{name}.weight"] = rng.normal(0, 0.3, (d_out, d_in)).astype(np.float32)
        weights[f"{name}.bias"] = rng.normal(0, 0.1, d_out).astype(np.float32)

    def norm(name: str) -> None:
        weights[f"{name}.weight"] = (1 + rng.normal(0, 0.1, hidden)).astype(np.float32)
        weights[f"{name}.bias"] = rng.normal(0, 0.1, hidden).astype(np.float32)

    for table, rows in (("word", config["vocab_size"]), ("position", 64), ("token_type", 2)):
        weights[f"embeddings.{table}_embeddings.weight"] = rng.normal(0, 1, (rows, hidden)).astype(
            np.float32
        )
    norm("embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            linear(f"{layer}.attention.self.{part}", hidden, hidden)
        linear(f"{layer}.attention.output.dense", hidden, hidden)
        norm(f"{layer}.attention.output.LayerNorm")
        linear(f"{layer}.intermediate.dense", inner, hidden)
        linear(f"{layer}.output.dense", hidden, inner)
        norm(f"{layer}.output.LayerNorm")
    if config["model_type"] == "xlm-roberta" and labels:  # no pooler; a two-layer head
        weights = {f"roberta.{name}": value for name, value in weights.items()}
        linear("classifier.dense", hidden, hidden)
        linear("classifier.out_proj", labels, hidden)
        return weights
    linear("pooler.dense", hidden, hidden)
    if labels:
        weights = {f"bert.{name}": value for name, value in weights.items()}
        linear("classifier", labels, hidden)
    return weights


def _checkpoint(
    directory: Path, config: dict[str, Any], pooling: str, labels: int = 0, seed: int = 0
) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True)
    weights = _random_bert(config, labels, seed)
    weights["embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    save_file(weights, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    _tokenizer().save(str(directory / "tokenizer.json"))
    if not labels:
        modules = [
            {"path": path, "type": f"sentence_transformers.models.{kind}"}
            for path, kind in (("", "Transformer"), ("1_Pooling", "Pooling"),
                               ("2_Normalize", "Normalize"))
        ]  # fmt: skip
        (directory / "modules.json").write_text(json.dumps(modules))
        (directory / "1_Pooling").mkdir()
        pooling_config = {f"pooling_mode_{pooling}": True}
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return weights


# -- numpy reference ---------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * w[f"{name}.weight"] + w[f"{name}.bias"]


def _linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def reference_hidden(
    w: dict[str, np.ndarray], ids: list[int], types: list[int], offset: int, heads: int = 2
) -> np.ndarray:
    """transformers' BertModel forward for one unpadded input, in float64 numpy."""
    w = {name: value.astype(np.float64) for name, value in w.items()}
    n = len(ids)
    h = w["embeddings.word_embeddings.weight"][ids]
    h = h + w["embeddings.position_embeddings.weight"][np.arange(n) + offset]
    h = _layer_norm(
        h + w["embeddings.token_type_embeddings.weight"][types], w, "embeddings.LayerNorm"
    )
    for i in range(2):
        layer = f"encoder.layer.{i}"
        q, k, v = (
            _linear(h, w, f"{layer}.attention.self.{p}").reshape(n, heads, -1).transpose(1, 0, 2)
            for p in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
        out = _linear(attended, w, f"{layer}.attention.output.dense") + h
        h = _layer_norm(out, w, f"{layer}.attention.output.LayerNorm")
        inner = _gelu(_linear(h, w, f"{layer}.intermediate.dense"))
        h = _layer_norm(
            _linear(inner, w, f"{layer}.output.dense") + h, w, f"{layer}.output.LayerNorm"
        )
    return h


# -- running the engine ------------------------------------------------------------------------


async def started(path: Path, **limits: int) -> EmbedEngine:
    engine = EmbedEngine("tiny-embed", path, EmbeddingLimits(**limits))
    engine.start()
    await engine.wait_loaded()
    return engine


async def result(stream: RequestStream) -> EmbeddingsDone:
    async for event in stream:
        assert isinstance(event, EmbeddingsDone), event
        return event
    raise AssertionError("stream ended without a result")


def with_specials(engine: EmbedEngine, texts: list[str]) -> list[list[int]]:
    assert engine.info is not None
    prefix, suffix = list(engine.info.special_prefix), list(engine.info.special_suffix)
    return [prefix + ids + suffix for ids in engine.tokenize(texts)]


@pytest.fixture
async def bert(tmp_path: Path) -> AsyncIterator[tuple[EmbedEngine, dict[str, np.ndarray]]]:
    weights = _checkpoint(tmp_path / "bert", BERT, "mean_tokens")
    engine = await started(tmp_path / "bert", max_batch=3)
    yield engine, weights
    engine.stop()


async def test_bert_mean_pooled_normalised_matches_numpy(
    bert: tuple[EmbedEngine, dict[str, np.ndarray]],
) -> None:
    engine, weights = bert
    assert engine.info is not None and engine.info.special_prefix == (2,)
    assert engine.info.pooling == "mean" and engine.info.normalized
    inputs = with_specials(engine, TEXTS)
    done = await result(engine.submit(EmbeddingRequest("r1", inputs)))
    assert done.prompt_tokens == sum(map(len, inputs))
    for ids, vector in zip(inputs, done.vectors, strict=True):
        expected = reference_hidden(weights, ids, [0] * len(ids), offset=0).mean(0)
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=2e-5)


async def test_xlm_roberta_positions_and_cls_pooling(tmp_path: Path) -> None:
    config = {**BERT, "model_type": "xlm-roberta", "pad_token_id": 1, "max_position_embeddings": 64}
    weights = _checkpoint(tmp_path / "xlmr", config, "cls_token", seed=1)
    engine = await started(tmp_path / "xlmr")
    try:
        assert engine.info is not None and engine.info.max_tokens == 62  # positions 2..63
        inputs = with_specials(engine, TEXTS)
        done = await result(engine.submit(EmbeddingRequest("r1", inputs)))
        for ids, vector in zip(inputs, done.vectors, strict=True):
            expected = reference_hidden(weights, ids, [0] * len(ids), offset=2)[0]
            np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=2e-5)
    finally:
        engine.stop()


async def test_cross_encoder_scores_pairs_like_numpy(tmp_path: Path) -> None:
    config = {**BERT, "architectures": ["BertForSequenceClassification"], "id2label": {"0": "x"}}
    weights = _checkpoint(tmp_path / "ce", config, "cls", labels=1, seed=2)
    engine = await started(tmp_path / "ce")
    try:
        assert engine.info is not None and engine.info.task == "score"
        pairs = engine.tokenize_pairs("a man eating", TEXTS, max_tokens=12)
        assert all(len(ids) <= 12 for ids, _ in pairs)
        assert pairs[1] == ([2, 4, 5, 7, 3, 11, 10, 3], [0, 0, 0, 0, 0, 1, 1, 1])
        assert engine.info.pair_specials == 3  # [CLS] [SEP] [SEP]: the edge's room for a query
        request = EmbeddingRequest("r1", [ids for ids, _ in pairs], [t for _, t in pairs])
        done = await result(engine.submit(request))
        assert done.vectors.shape == (len(TEXTS), 1)
        bare = {name.removeprefix("bert."): value for name, value in weights.items()}
        for (ids, types), logit in zip(pairs, done.vectors, strict=True):
            first = reference_hidden(bare, ids, types, offset=0)[0]
            pooled = np.tanh(_linear(first, bare, "pooler.dense"))
            np.testing.assert_allclose(logit, _linear(pooled, bare, "classifier"), atol=2e-5)
    finally:
        engine.stop()


async def test_xlm_roberta_cross_encoder_two_labels(tmp_path: Path) -> None:
    config = {
        **BERT,
        "model_type": "xlm-roberta",
        "pad_token_id": 1,
        "architectures": ["XLMRobertaForSequenceClassification"],
        "id2label": {"0": "no", "1": "yes"},
    }
    weights = _checkpoint(tmp_path / "xce", config, "cls", labels=2, seed=4)
    engine = await started(tmp_path / "xce")
    try:
        assert engine.info is not None and engine.info.dimensions == 2
        pairs = engine.tokenize_pairs("the girl", TEXTS, max_tokens=20)
        request = EmbeddingRequest("r1", [ids for ids, _ in pairs], [t for _, t in pairs])
        done = await result(engine.submit(request))
        bare = {name.removeprefix("roberta."): value for name, value in weights.items()}
        for (ids, types), logits in zip(pairs, done.vectors, strict=True):
            first = reference_hidden(bare, ids, types, offset=2)[0]
            dense = np.tanh(_linear(first, bare, "classifier.dense"))
            np.testing.assert_allclose(
                logits, _linear(dense, bare, "classifier.out_proj"), atol=2e-5
            )
    finally:
        engine.stop()


# -- ModernBERT against transformers' numbers (tests/engines/modernbert_reference.py) ----------


def _modernbert(directory: Path, labels: bool) -> dict[str, Any]:
    """A tiny ModernBERT checkpoint: the sequence classifier, or its encoder alone as a
    mean-pooling embedder (unnormalised, so the vectors are the pooled states themselves)."""
    directory.mkdir(parents=True)
    weights = modernbert_reference.tiny_weights()
    config = dict(modernbert_reference.CONFIG)
    if not labels:
        weights = {k: v for k, v in weights.items() if k.startswith("model.")}
        config = {**config, "architectures": ["ModernBertModel"]}
        (directory / "1_Pooling").mkdir()
        (directory / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    save_file(weights, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    _tokenizer().save(str(directory / "tokenizer.json"))
    reference: dict[str, Any] = json.loads(modernbert_reference.DATA.read_text())
    return reference


async def test_modernbert_matches_transformers(tmp_path: Path) -> None:
    """Alternating global/local attention (±2 tokens here, so the 11-token input reaches past
    it), rotary bases per kind, GeGLU, no biases: the mean-pooled states equal transformers'
    last_hidden_state averaged, with the three inputs padded into one pass."""
    reference = _modernbert(tmp_path / "modernbert", labels=False)
    assert reference["window_changes_output_by"] > 0.1  # the local layer's window matters
    engine = await started(tmp_path / "modernbert")
    try:
        assert engine.info is not None and engine.info.pooling == "mean"
        assert not engine.info.normalized and engine.info.task == "embed"
        done = await result(engine.submit(EmbeddingRequest("r1", modernbert_reference.INPUTS)))
        for vector, hidden in zip(done.vectors, reference["hidden"], strict=True):
            np.testing.assert_allclose(vector, np.mean(hidden, axis=0), atol=1e-4)
    finally:
        engine.stop()


async def test_modernbert_cross_encoder_matches_transformers(tmp_path: Path) -> None:
    """ModernBertForSequenceClassification: mean pooling over real tokens, the GELU head and
    its norm, then the classifier; padded together like the embedder."""
    reference = _modernbert(tmp_path / "modernbert-ce", labels=True)
    engine = await started(tmp_path / "modernbert-ce")
    try:
        assert engine.info is not None and engine.info.task == "score"
        done = await result(engine.submit(EmbeddingRequest("r1", modernbert_reference.INPUTS)))
        np.testing.assert_allclose(done.vectors, reference["logits"], atol=1e-4)
    finally:
        engine.stop()


async def test_decoder_last_token_matches_mlx_lm_unpadded(tmp_path: Path) -> None:
    model = tiny_model("qwen2", seed=3)
    directory = save_model_dir(model, "qwen2", tmp_path / "qwen-embed")
    (directory / "modules.json").write_text(
        json.dumps([{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    )  # fmt: skip
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text('{"pooling_mode_lasttoken": true}')
    engine = await started(directory)
    try:
        assert engine.info is not None and engine.info.pooling == "last"
        inputs = with_specials(engine, ["the cat sat on the mat", "hi", "a longer sentence here"])
        done = await result(engine.submit(EmbeddingRequest("r1", inputs)))
        for ids, vector in zip(inputs, done.vectors, strict=True):
            last = np.array(model.model(mx.array([ids]))[0, -1])
            np.testing.assert_allclose(vector, last / np.linalg.norm(last), atol=2e-5)
    finally:
        engine.stop()


async def test_single_input_is_not_starved_by_a_large_request(
    bert: tuple[EmbedEngine, dict[str, np.ndarray]],
) -> None:
    engine, _ = bert  # max_batch 3: the large request needs hundreds of passes
    [short] = with_specials(engine, ["bread"])
    large = engine.submit(EmbeddingRequest("large", [short] * 600))
    finished: list[str] = []

    async def wait(name: str, stream: RequestStream) -> None:
        await result(stream)
        finished.append(name)

    large_done = asyncio.ensure_future(wait("large", large))
    await asyncio.sleep(0.05)  # the large request is under way
    await wait("single", engine.submit(EmbeddingRequest("single", [short])))
    assert finished == ["single"]
    await large_done
    assert engine.largest_batch == 3 and engine.active == 0


async def test_cancelled_request_leaves(bert: tuple[EmbedEngine, dict[str, np.ndarray]]) -> None:
    engine, _ = bert
    [short] = with_specials(engine, ["bread"])
    stream = engine.submit(EmbeddingRequest("gone", [short] * 3000))
    stream.cancel()
    await wait_until(lambda: engine.active == 0, timeout=5)
    assert engine.inputs_embedded < 3000
