#!/usr/bin/env python
"""The long fuzz run: every property of tests/test_fuzz_records.py with 10,000 examples each
(the CI run uses 1,000), i.e. >= 10,000 cases per record decoder family plus ~1,000 batches of
arbitrary raw stream entries through a real control service.

    python scripts/fuzz_records.py            # 10,000 examples per property
    python scripts/fuzz_records.py 50000

Uses the Redis at CROWDFLOW_TEST_REDIS_URL (default the local one) under its own key prefix.
Exit status 0 means: no crash, no exception other than RecordError, nothing left pending."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    n = sys.argv[1] if len(sys.argv) > 1 else "10000"
    env = dict(os.environ, CROWDFLOW_FUZZ_EXAMPLES=n)
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "7200",
                              "--hypothesis-show-statistics", "tests/test_fuzz_records.py"], cwd=REPO, env=env))
