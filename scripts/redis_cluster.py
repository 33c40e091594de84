#!/usr/bin/env python3
"""Start or stop a real Redis Cluster on loopback: 3 masters + 3 replicas of ``redis-server``.

    python scripts/redis_cluster.py start [--base-port 7601] [--dir /tmp/cf-cluster-7601]
    python scripts/redis_cluster.py stop  [--base-port 7601]
    python scripts/redis_cluster.py status [--base-port 7601]

Nodes listen on ``base-port … base-port+5`` (cluster bus ports +10000), loopback only, no
persistence (``appendonly no``, ``save ""``), ``cluster-node-timeout`` 1000 ms so that a
killed master's replica is promoted in about 2 s. ``start`` prints the URL to use:
``redis+cluster://127.0.0.1:<base-port>`` (see :func:`crowdflow.bus.connect`).

``stop`` stops only the processes it started (pids kept in the cluster directory).
Used by ``tests/test_cluster.py`` and ``scripts/bench_cluster.py`` through :class:`Cluster`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

N_NODES = 6  # 3 masters, 3 replicas


class Cluster:
    """A local Redis Cluster of six ``redis-server`` processes this object starts and stops."""

    def __init__(self, base_port: int = 7601, directory: str | Path | None = None, node_timeout_ms: int = 1000):
        self.base_port = base_port
        self.ports = [base_port + i for i in range(N_NODES)]
        self.dir = Path(directory or f"/tmp/cf-cluster-{base_port}")
        self.node_timeout_ms = node_timeout_ms

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.base_port}"

    def pidfile(self, port: int) -> Path:
        return self.dir / f"{port}" / "redis.pid"

    def pid(self, port: int) -> int | None:
        try:
            return int(self.pidfile(port).read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self, port: int) -> bool:
        pid = self.pid(port)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def start_node(self, port: int) -> None:
        d = self.dir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "redis.conf"
        conf.write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", "protected-mode yes", "daemonize yes",
            f"pidfile {self.pidfile(port)}", f"dir {d}", f"logfile {d / 'redis.log'}",
            "cluster-enabled yes", f"cluster-config-file {d / 'nodes.conf'}",
            f"cluster-node-timeout {self.node_timeout_ms}", "cluster-replica-validity-factor 0",
            "cluster-require-full-coverage no", "appendonly no", 'save ""', "maxmemory 1gb",
            "maxmemory-policy noeviction", "",
        ]))
        subprocess.run(["redis-server", str(conf)], check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _port_open(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start; see {d / 'redis.log'}")
            time.sleep(0.05)

    def start(self) -> "Cluster":
        if any(_port_open(p) for p in self.ports):
            raise RuntimeError(f"a port in {self.ports} is in use; stop that cluster first")
        shutil.rmtree(self.dir, ignore_errors=True)
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 20, replicas: int = 3) -> None:
        """Until every live node says ``cluster_state:ok``, every slot is served and
        ``replicas`` replicas are known to the cluster and in sync with their masters."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = [p for p in self.ports if self.alive(p)]
            states = [self.cli(p, "cluster", "info") for p in live]
            synced = sum("master_link_status:up" in self.cli(p, "info", "replication") for p in live)
            if states and synced >= replicas and all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s
                                                     for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("cluster not ok:\n" + "\n".join(states))
            time.sleep(0.1)

    def cli(self, port: int, *args: str) -> str:
        res = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5)
        return res.stdout

    def masters(self) -> dict[int, list[str]]:
        """Port → slot ranges of each live master, as the cluster sees it now."""
        out = {}
        for port in self.ports:
            if not self.alive(port):
                continue
            for line in self.cli(port, "cluster", "nodes").splitlines():
                parts = line.split()
                if "myself" in parts[2] and "master" in parts[2]:
                    out[port] = parts[8:]
        return out

    def master_of(self, key: str) -> int:
        """The port of the live master serving ``key``."""
        slot = int(self.cli(next(p for p in self.ports if self.alive(p)), "cluster", "keyslot", key).strip())
        for port, ranges in self.masters().items():
            for r in ranges:
                if r.startswith("["):
                    continue
                lo, _, hi = r.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return port
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int, sig: int = signal.SIGKILL) -> None:
        pid = self.pid(port)
        if pid is not None:
            os.kill(pid, sig)

    def stop(self) -> None:
        for port in self.ports:
            pid = self.pid(port)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
        deadline = time.monotonic() + 5
        while any(self.alive(p) for p in self.ports) and time.monotonic() < deadline:
            time.sleep(0.05)
        for port in self.ports:
            if self.alive(port):
                self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("start", "stop", "status"))
    ap.add_argument("--base-port", type=int, default=7601)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)
    c = Cluster(args.base_port, args.dir)
    if args.action == "start":
        c.start()
        print(c.url)
    elif args.action == "stop":
        c.stop()
    else:
        for port, ranges in sorted(c.masters().items()):
            print(f"master 127.0.0.1:{port} slots {' '.join(ranges)}")
        print("live nodes:", [p for p in c.ports if c.alive(p)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
