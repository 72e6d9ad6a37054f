"""Run N tokenspout replicas on loopback ports behind nginx, in the foreground (``just cluster N``).

``python -m deploy.cluster 2 [--port 8080] [replica flags...]`` starts two ``tokenspout serve`` on
8081 and 8082 and a private nginx on 8080 with deploy/nginx.conf rendered for those ports; Ctrl-C
stops nginx and drains every replica. Flags it does not know go to every replica unchanged. The tests
use :class:`Cluster` directly, with other flags per replica.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

TEMPLATE = Path(__file__).with_name("nginx.conf")
_REPLICAS = re.compile(r"( *)# tokenspout-replicas-begin\n.*?# tokenspout-replicas-end\n", re.DOTALL)


class ClusterError(RuntimeError):
    """A replica or nginx did not start."""


def nginx_binary() -> str | None:
    """Debian's nginx, also when /usr/sbin is not on PATH (as for a user who is not root)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return found


def render_site(template: str, replicas: Sequence[str], listen: str, access_log: Path) -> str:
    """deploy/nginx.conf with these replicas (``host:port``), this ``listen`` address and access log,
    and ``proxy_next_upstream_tries`` equal to the number of replicas; everything else as shipped."""
    servers = "".join(f"    server {address} max_fails=0;\n" for address in replicas)
    text, found = _REPLICAS.subn(lambda _: servers, template)
    replacements = (
        (r"^(\s*listen\s+)\S+;", rf"\g<1>{listen};"),
        (r"^(\s*access_log\s+)\S+(\s+tokenspout;)", rf"\g<1>{access_log}\g<2>"),
        (r"^(\s*proxy_next_upstream_tries\s+)\d+;", rf"\g<1>{len(replicas)};"),
    )
    for pattern, replacement in replacements:
        text, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        found += n
    if found != 1 + len(replacements):
        raise ClusterError(f"{TEMPLATE} no longer has the lines deploy/cluster.py rewrites")
    return text


def render_main(site: Path, workdir: Path, workers: int) -> str:
    """The top level of a private nginx: everything under ``workdir``, so it needs no root and leaves
    the system's nginx alone."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    paths = "\n".join(f"    {kind}_temp_path {workdir / kind};" for kind in kinds)
    return (
        f"daemon off;\nworker_processes {workers};\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events {\n    worker_connections 1024;\n}\n"
        f"http {{\n{paths}\n    include {site};\n}}\n"
    )


def _die_with_parent() -> None:
    """Runs in each child before exec: Linux sends it SIGTERM when this process dies, however it dies
    (killed by a timeout, say), so no replica or nginx outlives the cluster that started it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class Replica:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


class Cluster:
    """Replicas (one list of ``tokenspout serve`` flags each) on loopback and nginx in front of them.

    Every child gets its own session, so a Ctrl-C in the terminal reaches only this process, which
    then stops them in order: nginx first (no new requests), then the replicas drain theirs."""

    def __init__(
        self,
        replica_flags: Sequence[Sequence[str]],
        *,
        listen: str,
        replica_ports: Sequence[int],
        workers: int = 2,
        workdir: Path | None = None,
        log_replicas: bool = True,
    ) -> None:
        if len(replica_ports) != len(replica_flags):
            raise ValueError("one port per replica")
        self.replica_flags = [list(flags) for flags in replica_flags]
        self.listen = listen
        self.replica_ports = list(replica_ports)
        self.workers = workers
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="tokenspout-cluster-")
        self.workdir = workdir or Path(self._tmp.name if self._tmp else ".")
        # nginx's workers drop root for `nobody` and must still reach their temporary files here.
        self.workdir.chmod(0o755)
        self.log_replicas = log_replicas
        self.access_log = self.workdir / "access.log"
        self.replicas: list[Replica] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        host, _, port = listen.rpartition(":")
        self.url = f"http://{host or '127.0.0.1'}:{port}"

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        binary = nginx_binary()
        if binary is None:
            raise ClusterError("nginx is not installed (Debian: apt-get install nginx, as `just nginx` does)")
        for flags, port in zip(self.replica_flags, self.replica_ports, strict=True):
            self.replicas.append(self.start_replica(flags, port))
        for replica in self.replicas:
            _until_healthy(replica.process, replica.url)
        site = self.workdir / "tokenspout.conf"
        addresses = [f"127.0.0.1:{port}" for port in self.replica_ports]
        site.write_text(render_site(TEMPLATE.read_text(), addresses, self.listen, self.access_log))
        main = self.workdir / "nginx.conf"
        main.write_text(render_main(site, self.workdir, self.workers))
        # -e: nginx opens its compiled-in error log before it reads the configuration; keep that one
        # in the work directory too, so a user who is not root gets no warning about /var/log/nginx.
        command = [binary, "-e", str(self.workdir / "error.log"), "-p", str(self.workdir), "-c", str(main)]
        self.nginx = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)
        _until_healthy(self.nginx, self.url, self.workdir / "error.log")

    def start_replica(self, flags: Sequence[str], port: int) -> Replica:
        command = [sys.executable, "-m", "server", "serve", "--port", str(port), *flags]
        output = None if self.log_replicas else subprocess.DEVNULL
        process = subprocess.Popen(
            command, start_new_session=True, stdout=output, stderr=output, preexec_fn=_die_with_parent
        )
        return Replica(process, port)

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: stop accepting, finish open requests
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.terminate()  # a drain: requests in flight finish, new ones get 503
        for process in [*(r.process for r in self.replicas), *([self.nginx] if self.nginx else [])]:
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.replicas.clear()
        self.nginx = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def kill_replica(self, index: int) -> None:
        """SIGKILL one replica, as a crash would: no drain, its connections reset."""
        process = self.replicas[index].process
        process.kill()
        process.wait()

    def upstream_statuses(self, marker: str = "") -> list[str]:
        """``$upstream_status`` of every request logged so far whose line holds ``marker`` (a query
        string, say), in the order nginx logged them."""
        if not self.access_log.exists():
            return []
        lines = [line for line in self.access_log.read_text().splitlines() if marker in line]
        found = (re.search(r"upstream_status=(.*?) request_time=", line) for line in lines)
        return [m.group(1) for m in found if m]


def _until_healthy(process: subprocess.Popen[bytes], url: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            detail = log.read_text() if log and log.exists() else ""
            raise ClusterError(f"{process.args!r} exited with code {process.returncode}\n{detail}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ClusterError(f"{url} did not become healthy in 120 s")
        time.sleep(0.1)


def _threads_each(replicas: int) -> int:
    """Cores shared out among replicas on one machine: N replicas with every core each would only
    fight over them."""
    return max(1, len(os.sched_getaffinity(0)) // replicas)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.cluster",
        description="N tokenspout replicas on loopback ports behind nginx (deploy/nginx.conf), in the "
        "foreground; Ctrl-C stops them all. Other flags go to every replica's `tokenspout serve`.",
    )
    parser.add_argument("replicas", type=int, nargs="?", default=2, help="how many replicas (default 2)")
    parser.add_argument("--host", default="127.0.0.1", help="nginx's address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port (default 8080)")
    parser.add_argument(
        "--first-replica-port", type=int, default=None, help="replicas listen from here up (default PORT+1)"
    )
    parser.add_argument("--workers", type=int, default=2, help="nginx worker processes (default 2)")
    options, replica_flags = parser.parse_known_args(argv)
    if options.replicas < 1:
        parser.error("at least one replica")
    given = {flag.split("=")[0] for flag in replica_flags}
    if "--threads" not in given:
        replica_flags += ["--threads", str(_threads_each(options.replicas))]
    if "--first-token-timeout" not in given:
        # Behind a proxy, a request still waiting for its first token has sent nothing at all: past
        # this it gets a clear 503 overloaded instead of looking like a replica that never answers.
        replica_flags += ["--first-token-timeout", "30"]
    first = options.first_replica_port or options.port + 1
    ports = [first + i for i in range(options.replicas)]
    cluster = Cluster(
        [replica_flags] * options.replicas,
        listen=f"{options.host}:{options.port}",
        replica_ports=ports,
        workers=options.workers,
    )
    stop = False

    def interrupted(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, interrupted)
    try:
        with cluster:
            print(
                f"nginx on {cluster.url} in front of {', '.join(r.url for r in cluster.replicas)}; "
                f"access log {cluster.access_log}; Ctrl-C stops them all",
                flush=True,
            )
            while not stop and all(r.process.poll() is None for r in cluster.replicas):
                time.sleep(0.5)
            if not stop:
                print("a replica exited: stopping the cluster", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    except ClusterError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
