"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens), a thin translator onto the
conversation layer."""
