"""Text-to-speech benchmark: real-time factor of Kokoro-82M, mlxd's engine against mlx-audio's
own Kokoro on the same store weights, in the same process, interleaved.

RTF = processing seconds / seconds of audio made (below 1: faster than real time). Measured:
- raw: `mlx_audio.tts.models.kokoro.Model` called on this thread with the phonemes and style
  row mlxd would use (no phonemizer time), split into the text side (ALBERT, prosody
  predictor, durations, F0/N curves) and the decoder (the iSTFTNet vocoder), so the time is
  attributed;
- mlxd: a KokoroEngine on its own thread (phonemes, one piece a sentence, audio back as numpy),
  and its time to the first audio of a multi-sentence input (streaming: the first sentence's
  audio arrives long before the whole input is spoken).

Usage: .venv/bin/python bench/tts.py --runs 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import median  # noqa: E402
from engines import blas  # noqa: E402

blas.preload_from_env()

from engines.types import AudioChunk, SynthesisRequest  # noqa: E402
from engines.weights.kokoro import NAME  # noqa: E402
from engines.weights.store import ModelStore, default_home  # noqa: E402

SENTENCE = "Today is a sunny day."
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
    style = mx.array(kokoro.voices[VOICE][len(phonemes)])
    timer.started = time.perf_counter()
    mx.random.seed(0)
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    path = ModelStore(default_home()).path_for(NAME)

    from engines.tts.engine import KokoroEngine
    from engines.tts.kokoro import Kokoro

    kokoro = Kokoro(path)
    timer = TimedDecoder(kokoro.model.decoder)
    kokoro.model.decoder = timer
    engine = KokoroEngine("bench", path)
    engine.start()
    await engine.wait_loaded()
    raw_run(kokoro, timer, "Hi.")  # warm-up: first-use costs out of the timings
    await engine_run(engine, "Hi.")
    results: dict[str, list[dict[str, float]]] = {"raw": [], "mlxd": [], "mlxd_paragraph": []}
    for run in range(args.runs):
        results["raw"].append(raw_run(kokoro, timer, SENTENCE))
        results["mlxd"].append(await engine_run(engine, SENTENCE))
        results["mlxd_paragraph"].append(await engine_run(engine, PARAGRAPH))
        print(f"run {run + 1}: " + json.dumps({k: v[-1] for k, v in results.items()}), flush=True)
    engine.stop()
    summary = {
        name: {key: median([run[key] for run in runs]) for key in runs[0]}
        for name, runs in results.items()
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "median": summary}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
