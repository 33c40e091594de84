"""The audit trail kept in full: rotated JSON-lines files, then trimmed from Redis.

Redis keeps the recent audit (``<p>:audit``, what the dashboard searches); everything is
appended first to one file per UTC day, ``<dir>/audit-YYYY-MM-DD.jsonl``, one line per entry:
``{"id": "<stream id>", "rec": {AuditEntry}}``, flushed and fsync'ed before Redis is trimmed.
The archive cursor (``<p>:audit:archived``, the last stream id written to a file) lives in
Redis, so whichever control instance leads continues where the previous one stopped; each
host's directory holds the days its leader archived (collect them with the usual log
shipping). Delivery is at-least-once: a crash between the file and the cursor repeats lines,
which carry their stream id, so readers drop repeats. Entries that are not valid records are
archived as their raw text (``"raw"`` instead of ``"rec"``): the trail never loses a line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

BATCH = 1000


def _day(entry_id: str) -> str:
    ms = int(entry_id.split("-", 1)[0])
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


class AuditArchive:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.archived = 0

    def archive(self, raw, stream: str, cursor: str | None) -> str | None:
        """Append every entry after ``cursor`` to the day files; return the new cursor (the last
        id written), or ``cursor`` when there was nothing new. ``raw`` is a bytes client."""
        start = f"({cursor}" if cursor else "-"
        last = cursor
        while True:
            entries = raw.xrange(stream, min=start, max="+", count=BATCH)
            if not entries:
                return last
            by_day: dict[str, list[str]] = {}
            for eid, fields in entries:
                eid = eid.decode() if isinstance(eid, bytes) else eid
                rec = fields.get(b"rec", fields.get("rec", b""))
                rec = rec.decode("utf-8", errors="backslashreplace") if isinstance(rec, bytes) else rec
                try:
                    line = json.dumps({"id": eid, "rec": json.loads(rec)}, ensure_ascii=False, separators=(",", ":"))
                except ValueError:
                    line = json.dumps({"id": eid, "raw": rec}, ensure_ascii=False)
                by_day.setdefault(_day(eid), []).append(line)
                last = eid
            for day, lines in by_day.items():
                path = self.dir / f"audit-{day}.jsonl"
                with open(path, "a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            self.archived += len(entries)
            if len(entries) < BATCH:
                return last
            start = f"({last}"


def read_archive(directory: str | Path) -> list[dict]:
    """Every archived entry, oldest first, repeats dropped (for audits and tests)."""
    out, seen = [], set()
    for path in sorted(Path(directory).glob("audit-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            d = json.loads(line)
            if d["id"] not in seen:
                seen.add(d["id"])
                out.append(d)
    return out
