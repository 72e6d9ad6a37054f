"""Where GGUF models come from: the default model and the local model store."""

from models.store import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    QWEN_CODER,
    ModelError,
    ModelSpec,
    check_gguf,
    ensure_model,
    model_dir,
    resolve_model_path,
)

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "QWEN_CODER",
    "ModelError",
    "ModelSpec",
    "check_gguf",
    "ensure_model",
    "model_dir",
    "resolve_model_path",
]
