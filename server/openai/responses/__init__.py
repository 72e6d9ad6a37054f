"""OpenAI's Responses API (POST /v1/responses), a thin translator onto the conversation layer."""
