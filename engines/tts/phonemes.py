"""English text → Kokoro phonemes, offline: espeak-ng (from the `espeakng-loader` wheel, which
ships the library and its data) through ctypes, then misaki's espeak mapping.

Kokoro-82M v1.0 was trained on misaki's phoneme set. misaki's own English G2P needs a spaCy
model downloaded at run time, so this module uses what misaki itself falls back to for words
missing from its lexicon: espeak-ng IPA, with multi-letter phonemes tied ("a^ɪ") and mapped to
misaki's one-letter diphthongs ("I") and American forms (see `FROM_ESPEAK`).

Invariants: espeak-ng is initialised once per process and is not thread-safe, so every call
holds `_LOCK`; punctuation that Kokoro reads (, . ! ? ; : — …) is kept between the phonemes of
the clauses it separates (espeak-ng drops it).
"""

from __future__ import annotations

import ctypes
import re
import threading

TIE = "^"
# misaki's espeak.py mapping (tied espeak IPA → misaki), longest first.
FROM_ESPEAK = sorted(
    {
        "ʔˌn\u0329": "tᵊn",
        "ʔn": "tᵊn",
        "a^ɪ": "I",
        "a^ʊ": "W",
        "d^ʒ": "ʤ",
        "e^ɪ": "A",
        "t^ʃ": "ʧ",
        "ɔ^ɪ": "Y",
        "ə^l": "ᵊl",
        "o^ʊ": "O",
        "ɜːɹ": "ɜɹ",
        "ɜː": "ɜɹ",
        "ɪə": "iə",
        "\u0303": "",
        "e": "A",
        "r": "ɹ",
        "x": "k",
        "ç": "k",
        "ɐ": "ə",
        "ɚ": "əɹ",
        "ɬ": "l",
        "ʔ": "t",
        "ʲ": "",
        "ː": "",
    }.items(),
    key=lambda pair: -len(pair[0]),
)
_PUNCTUATION = re.compile(r"\s*([,.!?;:—…]+)\s*")
_LOCK = threading.Lock()
_ESPEAK: ctypes.CDLL | None = None
IPA_WITH_TIES = 0x02 | 0x80 | (ord(TIE) << 8)  # espeak_TextToPhonemes: IPA, ties as TIE


def _espeak() -> ctypes.CDLL:
    global _ESPEAK
    if _ESPEAK is None:
        import espeakng_loader

        library = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        if library.espeak_Initialize(0x02, 0, ctypes.c_char_p(data), 0) <= 0:  # synchronous
            raise RuntimeError("espeak-ng failed to initialise")
        library.espeak_TextToPhonemes.restype = ctypes.c_char_p
        library.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        if library.espeak_SetVoiceByName(b"en-us") != 0:
            raise RuntimeError("espeak-ng has no en-us voice")
        _ESPEAK = library
    return _ESPEAK


def espeak_ipa(text: str) -> str:
    """espeak-ng's tied IPA for `text` (clauses joined by spaces; punctuation dropped)."""
    with _LOCK:
        library = _espeak()
        buffer = ctypes.c_char_p(text.encode("utf-8"))
        pointer = ctypes.pointer(buffer)
        clauses = []
        while pointer.contents.value:
            result = library.espeak_TextToPhonemes(pointer, 1, IPA_WITH_TIES)  # 1: UTF-8
            clauses.append(result.decode("utf-8") if result else "")
    return " ".join(clause.strip() for clause in clauses if clause.strip())


def to_misaki(ipa: str) -> str:
    for old, new in FROM_ESPEAK:
        ipa = ipa.replace(old, new)
    return ipa.replace(TIE, "")


def phonemize(text: str) -> str:
    """Kokoro phonemes for English `text`, with its punctuation kept."""
    pieces = _PUNCTUATION.split(text)
    out: list[str] = []
    for index, piece in enumerate(pieces):
        if index % 2:  # a punctuation run (the split's captured group)
            out.append(piece + " ")
        elif piece.strip():
            out.append(to_misaki(espeak_ipa(piece)))
    return "".join(out).strip()
