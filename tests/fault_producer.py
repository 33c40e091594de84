"""A fault-test producer: the edge's real publishing path (edge.spool.Publisher + Spool) with
synthetic counts, so that a test knows exactly what was sent (camera, seq) without running
YOLO. Run as ``python -m tests.fault_producer``; SIGTERM stops it, it drains its spool (up
to --drain-s) and writes the sent (camera, seq) pairs and what is still spooled to --out."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time

from crowdflow.bus import Keys, connect
from crowdflow.records import Observation, ZoneCount
from crowdflow.site import load_site
from edge.spool import Publisher, Spool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--cameras", required=True)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--spool", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clock-offset", type=float, default=0.0, help="this gateway's clock error (s)")
    ap.add_argument("--drain-s", type=float, default=20.0)
    ap.add_argument("--health-file", help="a file whose text is the health the camera reports (default ok)")
    args = ap.parse_args()
    site = load_site("configs/hongyadong.yaml")
    cams = [site.camera_by_id[c] for c in args.cameras.split(",")]
    clock = lambda: time.time() + args.clock_offset  # noqa: E731
    r = connect(args.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    spool = Spool(args.spool)
    pub = Publisher(r, Keys(args.prefix), spool, clock=clock)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    sent: list[tuple[str, int]] = []
    seq = int(time.time() * 1000)
    interval = 1.0 / args.rate
    nxt = time.monotonic()
    while not stop.is_set():
        health = "ok"
        if args.health_file:
            try:
                health = open(args.health_file).read().strip() or "ok"
            except OSError:
                pass
        for cam in cams:
            zone = site.zone_by_id[cam.zones[0]]
            vis = min(zone.walkable_area_m2, 500.0)
            h = health if cam is cams[0] else "ok"  # the first camera gets the fault
            zones = [ZoneCount(zone_id=zone.id, count=round(0.3 * vis, 1), visible_area_m2=vis)] if h == "ok" else []
            o = Observation(camera_id=cam.id, agent_id="fault-producer", seq=seq, captured_at=clock(), window_s=interval,
                            frames=5 if h == "ok" else 0, health=h, zones=zones)
            pub.publish(o)
            sent.append((cam.id, seq))
        seq += 1
        nxt += interval
        stop.wait(max(0.0, nxt - time.monotonic()))
    deadline = time.monotonic() + args.drain_s
    while pub.waiting and time.monotonic() < deadline:
        pub.drain()
        time.sleep(0.2)
    with open(args.out, "w") as f:
        json.dump({"sent": sent, "waiting": pub.waiting, "lost": pub.lost}, f)


if __name__ == "__main__":
    main()
