#!/usr/bin/env python
"""Run the fault-injection suite and print its table (the one in docs/reliability.md).

    python scripts/fault_table.py                 # runs tests/test_faults_procs.py
    python scripts/fault_table.py rows.jsonl      # only format rows collected earlier
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def table(rows: list[dict]) -> str:
    out = ["| fault | sent | applied | lost | control alive | to `unknown` (s) | live again (s) | takeover (s) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda k: "–" if r.get(k) is None else r[k]  # noqa: E731
        out.append(f"| {r['fault']} | {r['sent']} | {r['applied']} | {r['lost']} | {'yes' if r['control_alive'] else 'NO'} "
                   f"| {f('to_unknown_s')} | {f('live_again_s')} | {f('takeover_s')} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        path = Path(tempfile.mkdtemp()) / "rows.jsonl"
        subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_faults_procs.py"],
                        cwd=REPO, env=dict(os.environ, CROWDFLOW_FAULT_REPORT=str(path)))
    print(table([json.loads(line) for line in path.read_text().splitlines() if line.strip()]))
