"""Speech to text: the whisper engine, audio decoding, decoding rules and response formats."""
