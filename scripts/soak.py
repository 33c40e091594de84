#!/usr/bin/env python
"""Soak: a whole simulated evening at 60x through the real services, measuring Redis memory.

Starts its own redis-server (loopback port in 7300-7399, never the shared one), the real
`crowdflow control` (audit archived to files) and `crowdflow sim` for every camera at --speed
from the scenario's start to its end, plus a commander who overrides a plan every 20 s and a
viewer whose forged commands are refused every 15 s (both grow the audit). Every retention
window is divided by the same speed (CROWDFLOW_RETENTION_SCALE, see crowdflow/bus.py), so
Redis reaches the steady state a real evening reaches. Memory (used_memory, keys, stream
lengths) is sampled every 10 s; "start" is the first sample after the warm-up (the longest
scaled window: the 3-h (camera, seq) dedupe window, i.e. 180 s at 60x). The audit trail is
archived in full to JSON-lines files (Redis keeps its last hour); the run checks that every
command the soak sent is in the archive.

    python scripts/soak.py                      # the whole evening (6.5 h at 60x: ~6.5 min)
    python scripts/soak.py --evening-s 120      # a short run

Prints one JSON object with the samples and the growth between start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crowdflow.records import Command  # noqa: E402
from tests.faults import RedisServer  # noqa: E402


def sample(r, prefix: str) -> dict:
    info = r.info("memory")
    lens, kb = {}, {}
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        t = r.type(key)
        short = key.split(":", 1)[1]
        short = "zone:hist:*" if short.startswith("zone:hist:") else "obs:seen:*" if short.startswith("obs:seen:") \
            else "session:*" if short.startswith("session:") else short
        n = {"stream": r.xlen, "hash": r.hlen, "zset": r.zcard}.get(t, lambda k: 1)(key)
        lens[short] = lens.get(short, 0) + n
        kb[short] = round(kb.get(short, 0) + (r.memory_usage(key, samples=0) or 0) / 1024, 1)
    return {"t": time.time(), "used_mb": round(info["used_memory"] / 2**20, 3), "keys": r.dbsize(), "lens": lens,
            "kb": kb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", type=float, default=60.0)
    ap.add_argument("--evening-s", type=float, help="wall seconds (default: the scenario's evening at --speed)")
    ap.add_argument("--warmup-s", type=float, help="wall seconds before the start sample (default 7200/speed)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    evening = args.evening_s or (23.5 - 17.0) * 3600 / args.speed
    warmup = args.warmup_s if args.warmup_s is not None else 3 * 3600 / args.speed  # the dedupe window
    tmp = Path(tempfile.mkdtemp(prefix="cf-soak-"))
    prefix = "soak"
    with RedisServer(tmp / "redis", appendonly=False) as srv:
        r = srv.client()
        env = dict(os.environ, REDIS_URL=srv.url, CROWDFLOW_REDIS_PREFIX=prefix, PYTHONUNBUFFERED="1",
                   CROWDFLOW_DATA_DIR=str(tmp / "var"), CROWDFLOW_RETENTION_SCALE=str(args.speed))
        procs = [subprocess.Popen([sys.executable, "-m", "crowdflow.cli", *a], cwd=REPO, env=env,
                                  stdout=open(tmp / f"{a[0]}.log", "w"), stderr=subprocess.STDOUT)
                 for a in (["control"], ["sim", "--speed", str(args.speed), "--start", "17:00",
                                         "--duration", str(evening)])]
        samples, t0, sent = [], time.time(), []
        next_sample = next_cmd = next_bad = t0
        level = None
        try:
            while procs[1].poll() is None and time.time() - t0 < evening + 30:
                now = time.time()
                if now >= next_cmd:
                    level = None if level else "IV"
                    c = Command(id=uuid.uuid4().hex, kind="override", plan_id="bridge", level=level, note="soak",
                                user="soak", role="commander", issued_at=now)
                    r.xadd(f"{prefix}:cmd", {"rec": c.encode()})
                    sent.append(c.id)
                    next_cmd = now + 20
                if now >= next_bad:
                    c = Command(id=uuid.uuid4().hex, kind="set_mode", mode="emergency", user="mallory", role="viewer",
                                issued_at=now)
                    r.xadd(f"{prefix}:cmd", {"rec": c.encode()})
                    sent.append(c.id)
                    next_bad = now + 15
                if now >= next_sample:
                    samples.append(sample(r, prefix))
                    next_sample = now + 10
                time.sleep(0.5)
            samples.append(sample(r, prefix))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait(20)
        start = next(s for s in samples if s["t"] - t0 >= warmup)
        end = samples[-1]
        from control.archive import read_archive

        arch = read_archive(tmp / "var" / "audit") if (tmp / "var" / "audit").exists() else []
        audited = {d["rec"].get("command_id") for d in arch if "rec" in d}
        out = {"speed": args.speed, "evening_wall_s": evening, "warmup_s": warmup,
               "start_mb": start["used_mb"], "end_mb": end["used_mb"],
               "growth_pct": round(100 * (end["used_mb"] - start["used_mb"]) / start["used_mb"], 2),
               "first_mb": samples[0]["used_mb"], "peak_mb": max(s["used_mb"] for s in samples),
               "audit_archived_entries": len(arch), "audit_in_redis_at_end": end["lens"].get("audit", 0),
               "commands_sent": len(sent),
               # every command the soak sent was answered with an audit entry (override or refusal),
               # except those still in flight when the run stopped
               "commands_not_in_archive": len(set(sent) - audited),
               "growth_kb_by_key": {k: round(end["kb"].get(k, 0) - start["kb"].get(k, 0), 1)
                                    for k in sorted(set(end["kb"]) | set(start["kb"]))}, "start": start, "end": end,
               "control_log_tail": (tmp / "control.log").read_text()[-1500:],
               "samples": [(round(s["t"] - t0), s["used_mb"], s["keys"]) for s in samples]}
        text = json.dumps(out, indent=1)
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
