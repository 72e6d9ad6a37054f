"""Hugging Face text-generation-inference's protocol."""
