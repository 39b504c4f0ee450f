"""The voice loop on real models: speech made by mlxd's Kokoro-82M (imported from its PyPI
packages) and transcribed by mlxd's whisper tiny.en gives the input text back (WER ≤ 0.1),
through the strict SDK, plain and streamed. Opt-in: Kokoro on this CPU takes tens of seconds a
sentence."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.weights.embedded import WHISPER_TINY_EN
from engines.weights.kokoro import NAME as KOKORO
from engines.weights.kokoro import ensure_kokoro
from engines.weights.store import ModelStore
from server.app import create_app
from server.settings import Settings
from tests.helpers import sdk_client
from tests.servers import serve

pytestmark = pytest.mark.optin

SENTENCES = (
    "Hello, my name is Alice and I live in Paris.",
    "Today is a sunny day.",
    "Please open the window.",
)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings()
    store = ModelStore(settings.home)
    ensure_kokoro(store, progress=False)
    if not store.has(WHISPER_TINY_EN.name):
        pytest.fail(f"{WHISPER_TINY_EN.name} is not in {settings.home}; run `make install`")
    models = tmp_path_factory.mktemp("voice") / "models.toml"
    models.write_text(
        f'[[models]]\nname = "{KOKORO}"\nsource = "{KOKORO}"\npreload = true\n\n'  # kind: detected
        f'[[models]]\nname = "{WHISPER_TINY_EN.name}"\nsource = "{WHISPER_TINY_EN.name}"\n'
        'kind = "speech"\npreload = true\n'
    )
    with serve(create_app(Settings(config=models))) as base_url:
        yield base_url


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i]
        for j, hyp_word in enumerate(hyp, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
            )
        previous = current
    return previous[-1] / max(1, len(ref))


def transcribe(url: str, audio: bytes, filename: str) -> str:
    client = sdk_client(url, timeout=600)
    result = client.audio.transcriptions.create(
        model=WHISPER_TINY_EN.name, file=(filename, audio), language="en"
    )
    return result.text


def test_word_error_rate_helper() -> None:
    assert word_error_rate("Today is a sunny day.", "today is a sunny day") == 0
    assert word_error_rate("a b c d", "a x c") == 0.5


@pytest.mark.parametrize("sentence", SENTENCES)
def test_speech_comes_back_as_its_text(url: str, sentence: str) -> None:
    client = sdk_client(url, timeout=600)
    speech = client.audio.speech.create(
        model=KOKORO, voice="jf_alpha", input=sentence, response_format="wav"
    )
    text = transcribe(url, speech.content, "speech.wav")
    assert word_error_rate(sentence, text) <= 0.1, (sentence, text)


def test_streamed_mp3_of_two_sentences(url: str, tmp_path: Path) -> None:
    client = sdk_client(url, timeout=600)
    chunks = 0
    target = tmp_path / "speech.mp3"
    with client.audio.speech.with_streaming_response.create(
        model=KOKORO, voice="jm_kumo", input=" ".join(SENTENCES[1:]), response_format="mp3"
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        with target.open("wb") as sink:
            for chunk in response.iter_bytes():
                sink.write(chunk)
                chunks += 1
    text = transcribe(url, target.read_bytes(), "speech.mp3")
    assert word_error_rate(" ".join(SENTENCES[1:]), text) <= 0.1, text
    assert chunks >= 2  # one encoded piece a sentence at least
