#!/usr/bin/env python
"""The long API fuzz run: schemathesis over every operation of the dashboard's OpenAPI (valid
and invalid input), then its stateful phase (call sequences following the OpenAPI links),
against real dashboard + control processes with a commander's session.

    python scripts/fuzz_api.py                 # 1,000 examples per operation and mode, 300 scenarios
    python scripts/fuzz_api.py 5000 1000       # examples, stateful scenarios

Fails on any 5xx, any status the OpenAPI does not document, any response unlike its schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    n = sys.argv[1] if len(sys.argv) > 1 else "1000"
    scenarios = sys.argv[2] if len(sys.argv) > 2 else "300"
    env = dict(os.environ, CROWDFLOW_API_FUZZ_EXAMPLES=n, CROWDFLOW_API_FUZZ_SCENARIOS=scenarios)
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--timeout", "7200",
                              "tests/test_api_fuzz.py"], cwd=REPO, env=env))
