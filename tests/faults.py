"""Real processes to break on purpose: a redis-server of our own and a loopback TCP proxy.

Fault tests never touch the shared Redis at 6379: they start ``redis-server`` on a loopback
port in 7300-7399 (``CROWDFLOW_FAULT_PORTS`` overrides the range) and stop only what they
started. The proxy is the one fake here, and only because a real network cannot be cut on
demand without root: it forwards bytes unchanged and can drop or freeze every connection
(a partition), which a real redis-server cannot do to itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

_lo, _hi = (int(x) for x in os.environ.get("CROWDFLOW_FAULT_PORTS", "7300-7399").split("-"))
_lock = threading.Lock()
_next = [_lo + (os.getpid() % (_hi - _lo + 1))]


def fault_port() -> int:
    """A free loopback port in the range reserved for fault tests."""
    with _lock:
        for _ in range(_hi - _lo + 1):
            port = _next[0]
            _next[0] = _lo + (port + 1 - _lo) % (_hi - _lo + 1)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port in {_lo}-{_hi}")


class RedisServer:
    """A real redis-server on a reserved loopback port, with its own directory."""

    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = True,
                 maxmemory: str | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or fault_port()
        self.appendonly = appendonly
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if c.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} did not start: "
                                       f"{(self.dir / 'redis.log').read_text(errors='replace')[-500:]}")
                time.sleep(0.05)
        c.close()
        return self

    def client(self, **kw) -> redis.Redis:
        from crowdflow.bus import connect

        return connect(self.url, **kw)

    def kill(self) -> None:
        """SIGKILL: what an OOM killer or a power cut does."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TcpProxy:
    """Loopback TCP forwarder between clients and a server, able to cut the link (``cut()``:
    close every connection and refuse new ones) or freeze it (``freeze()``: accept, keep the
    sockets open, pass no byte: a partition where packets are dropped, not refused)."""

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port or fault_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._mode = "pass"  # pass | cut | freeze
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._srv.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if self._mode == "cut":
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        while not self._stop.is_set():
            if self._mode == "freeze":
                time.sleep(0.05)
                continue
            try:
                data = src.recv(65536)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            if not data or self._mode == "cut":
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        self._mode = "cut"
        self._close_all()

    def freeze(self) -> None:
        self._mode = "freeze"

    def heal(self) -> None:
        if self._mode == "freeze":
            self._close_all()  # frozen connections carry half-sent commands: start clean
        self._mode = "pass"

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        self._close_all()
