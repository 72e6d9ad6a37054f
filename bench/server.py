"""Start a real tokenspout server on a free loopback port (shared by the bench and the tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(
    model: str, flags: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[str]:
    """Yield the base URL of a ``tokenspout serve`` subprocess once /health answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "server", "serve", "--model", model, "--port", str(port), *flags]
    process = subprocess.Popen(command, env={**os.environ, **(env or {})})
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}")
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become healthy in 120 s")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
