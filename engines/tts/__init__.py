"""Text to speech (the "tts" kind): Kokoro-82M on its own engine thread (engine.py), text split
at sentence ends (text.py), phonemes from espeak-ng (phonemes.py), audio encoded by PyAV
(encode.py). Importing this package imports no MLX."""
