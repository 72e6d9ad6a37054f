"""OpenAI's protocols: chat completions, completions, models."""
