"""The llm role: an agent that thinks with a language model (docs/llm.md)."""
