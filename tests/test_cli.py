"""The command line: clear one-line errors for bad models, and --help that tells the truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def tokenspout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=120
    )


def test_a_missing_model_file_is_a_one_line_error(tmp_path: Path) -> None:
    result = tokenspout("serve", "--model", str(tmp_path / "nope.gguf"))
    assert result.returncode != 0
    assert result.stderr.strip() == f"Error: model file not found: {tmp_path / 'nope.gguf'}"


def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("this is no model")
    result = tokenspout("serve", "--model", str(fake))
    assert result.returncode != 0
    assert result.stderr.strip().startswith("Error: not a GGUF model file")
    assert "Traceback" not in result.stderr


def test_help_lists_every_contract_flag_with_its_environment_variable() -> None:
    text = tokenspout("serve", "--help").stdout
    for flag in (
        "--model",
        "--host",
        "--port",
        "--max-concurrent-requests",
        "--max_concurrent_requests",
        "--parallel",
        "--ctx-size",
        "--kv-budget-mib",
        "--cache-ram",
        "--deterministic",
        "--threads",
        "--n-gpu-layers",
        "--api-key",
        "--max-input-tokens",
        "--max-total-tokens",
        "--max-stop-sequences",
        "--payload-limit",
    ):
        assert flag in text, flag
    assert "TOKENSPOUT_MAX_CONCURRENT_REQUESTS" in text and "TOKENSPOUT_API_KEY" in text
    assert "127.0.0.1" in text and "8080" in text


def test_deterministic_mode_refuses_micro_batches_of_64_rows_or_more() -> None:
    result = tokenspout("serve", "--deterministic", "--ubatch-size", "64")
    assert result.returncode != 0 and "--ubatch-size" in result.stderr and "64" in result.stderr


def test_ctx_size_is_auto_or_a_number() -> None:
    result = tokenspout("serve", "--ctx-size", "lots")
    assert result.returncode != 0 and "'lots' is neither 'auto' nor a number" in result.stderr
    assert "TOKENSPOUT_CTX_SIZE" in tokenspout("serve", "--help").stdout
