"""OpenAI's voice names on a Kokoro model: each name stands for the first Kokoro voice of its
list that the model has.

OpenAI's voices (alloy … cedar) are not Kokoro's, so a client that sends `voice: "nova"` gets a
Kokoro voice of the same kind: Kokoro-82M v1.0's own namesake where it has one (af_alloy,
af_nova, am_echo, am_onyx, bm_fable), then a voice of the same register (female or male, as
OpenAI's voice sounds), then the packaged model's Japanese voices (jf_* female, jm_kumo male),
so the list resolves on the full Kokoro voice set and on the five voices mlxd imports alike.

Invariants: a model's own voice names always win (a model with a voice called "nova" speaks
with it); an alias resolves to a voice of the model or to nothing (then it is not offered).
"""

from __future__ import annotations

from collections.abc import Iterable

_FEMALE = ("af_heart", "af_bella", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro")
_MALE = ("am_michael", "am_adam", "jm_kumo")

# OpenAI voice → Kokoro voices in order of preference. The packaged jf_* voices are spread
# over OpenAI's female voices so that different names sound different where they can.
OPENAI_VOICES: dict[str, tuple[str, ...]] = {
    "alloy": ("af_alloy", "jf_alpha", *_FEMALE),
    "ash": ("am_adam", *_MALE),
    "ballad": ("bm_lewis", *_MALE),
    "coral": ("af_kore", "jf_gongitsune", *_FEMALE),
    "echo": ("am_echo", *_MALE),
    "fable": ("bm_fable", *_MALE),
    "onyx": ("am_onyx", *_MALE),
    "nova": ("af_nova", "jf_nezumi", *_FEMALE),
    "sage": ("af_sarah", "jf_tebukuro", *_FEMALE),
    "shimmer": ("af_sky", "jf_gongitsune", *_FEMALE),
    "verse": ("am_fenrir", *_MALE),
    "marin": ("af_river", "jf_nezumi", *_FEMALE),
    "cedar": ("am_liam", *_MALE),
}


def openai_aliases(voices: Iterable[str]) -> dict[str, str]:
    """OpenAI voice name → the model's voice it stands for, for every OpenAI name that resolves
    on `voices` and is not itself one of them."""
    have = set(voices)
    aliases = {}
    for name, preferences in OPENAI_VOICES.items():
        chosen = next((voice for voice in preferences if voice in have), None)
        if chosen is not None and name not in have:
            aliases[name] = chosen
    return aliases
