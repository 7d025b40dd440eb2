"""Conversions between olmo's native checkpoints and other ecosystems' formats (Hugging Face)."""
