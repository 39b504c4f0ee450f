"""Whisper's vocabulary: special token ids, languages, text ↔ tokens.

Special ids are looked up by name in the model's own vocabulary (English-only and multilingual
models number them differently). Invariant: `decode` never raises on any id list; ids that are
special (≥ end of text) contribute no text.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from engines.byte_level import gpt2_byte_decoder
from engines.errors import InvalidRequest
from engines.types import SpeechModelInfo

# Whisper's languages (code → lower-case English name), in the order of their tokens.
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian",
    "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}  # fmt: skip
_NAME_TO_CODE = {name: code for code, name in LANGUAGES.items()}
_SPECIAL = re.compile(r"^<\|([a-z]{2,3})\|>$")


class WhisperVocab:
    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.tokens = (directory / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
        ids = {token: i for i, token in enumerate(self.tokens)}
        self.eot = ids["<|endoftext|>"]
        self.sot = ids["<|startoftranscript|>"]
        self.translate = ids["<|translate|>"]
        self.transcribe = ids["<|transcribe|>"]
        self.sot_prev = ids["<|startofprev|>"]
        self.no_timestamps = ids["<|notimestamps|>"]
        self.no_speech = ids.get("<|nospeech|>", ids.get("<|nocaptions|>", -1))
        self.timestamp_begin = ids["<|0.00|>"]
        self.language_ids: dict[str, int] = {}
        for token_id in range(self.sot + 1, self.translate):
            match = _SPECIAL.match(self.tokens[token_id])
            if match and match.group(1) in LANGUAGES:
                self.language_ids[match.group(1)] = token_id
        # English-only vocabularies carry the language tokens too, one id fewer (51864).
        self.multilingual = len(self.tokens) >= 51865
        self._byte_decoder = gpt2_byte_decoder()
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))

    @staticmethod
    def language_code(language: str) -> str | None:
        """ISO-639-1 code for a code or an English name ("en", "English"), or None."""
        key = language.strip().lower()
        if key in LANGUAGES:
            return key
        return _NAME_TO_CODE.get(key)

    def sot_sequence(self, language: str | None, task: str) -> list[int]:
        """The decoder's start: <|startoftranscript|> (+ language and task on multilingual)."""
        if not self.multilingual:
            return [self.sot]
        sequence = [self.sot, self.language_ids[language or "en"]]
        sequence.append(self.translate if task == "translate" else self.transcribe)
        return sequence

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def text_bytes(self, token_ids: list[int]) -> bytes:
        out = bytearray()
        for token_id in token_ids:
            if 0 <= token_id < self.eot:
                out.extend(self._byte_decoder[ch] for ch in self.tokens[token_id])
        return bytes(out)

    def decode(self, token_ids: list[int]) -> str:
        return self.text_bytes(token_ids).decode("utf-8", errors="replace")


def decoding_language(
    info: SpeechModelInfo, language: str | None, task: str, known: Collection[str] | None
) -> str | None:
    """The ISO code to decode with for a request asking `language` and `task` of the model
    `info` (`known`: the languages its vocabulary has, when loaded); InvalidRequest naming the
    param when unusable. A pure function: the engine and the test fakes answer alike."""
    if task == "translate" and not info.multilingual:
        raise InvalidRequest(
            f"model '{info.name}' is English-only and cannot translate; use a multilingual "
            "whisper model (e.g. whisper-base)",
            param="model",
        )
    if language is None or not language.strip():
        return None if info.multilingual else "en"
    code = WhisperVocab.language_code(language)
    if code is None:
        raise InvalidRequest(
            f"unknown language {language!r}: use an ISO-639-1 code such as 'en' or 'de'",
            param="language",
        )
    if not info.multilingual and code != "en":
        raise InvalidRequest(
            f"model '{info.name}' is English-only; it cannot transcribe {LANGUAGES[code]}",
            param="language",
        )
    if known is not None and code not in known and info.multilingual:
        raise InvalidRequest(f"model '{info.name}' does not know {code!r}", param="language")
    return code
