"""Start a real tokenspout server on a free loopback port (shared by the bench and the tests)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(
    model: str, flags: Sequence[str] = (), env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``tokenspout serve`` in a subprocess and return it with its base URL once /health is 200."""
    port = free_port()
    command = [sys.executable, "-m", "server", "serve", "--model", model, "--port", str(port), *flags]
    return _until_healthy(subprocess.Popen(command, env={**os.environ, **(env or {})}), port)


def llama_server_binary() -> Path | None:
    """llama.cpp's own server as `just llama-server` builds it, if it has been built."""
    version = importlib.metadata.version("llama-cpp-python")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    binary = cache / "tokenspout" / f"llama-server-{version}" / "llama-server"
    return binary if binary.exists() else None


@contextlib.contextmanager
def serving_llama_server(
    binary: Path, model: str, flags: Sequence[str]
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    command = [str(binary), "-m", model, "--host", "127.0.0.1", "--port", str(port), *flags]
    process, base_url = _until_healthy(subprocess.Popen(command, stderr=subprocess.DEVNULL), port)
    try:
        yield process, base_url
    finally:
        stop(process)


def _until_healthy(process: subprocess.Popen[bytes], port: int) -> tuple[subprocess.Popen[bytes], str]:
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return process, base_url
        if time.monotonic() > deadline:
            stop(process)
            raise RuntimeError("the server did not become healthy in 120 s")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes], timeout: float = 45) -> int:
    """SIGTERM (a graceful drain), then SIGKILL if it takes longer than ``timeout``; the exit code."""
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@contextlib.contextmanager
def serving(
    model: str, flags: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Yield a ``tokenspout serve`` subprocess and its base URL; stop it afterwards."""
    process, base_url = spawn(model, flags, env)
    try:
        yield process, base_url
    finally:
        stop(process)


@contextlib.contextmanager
def running_server(model: str, flags: Sequence[str] = (), env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the base URL of a ``tokenspout serve`` subprocess; stop it afterwards."""
    with serving(model, flags, env) as (_, base_url):
        yield base_url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads included (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
