"""Dashboard test users (made here with the real hashing, passed as CROWDFLOW_USERS) and the
WebSocket's frames read as the messages they carry."""

from __future__ import annotations

import functools
import json

from dashboard.auth import hash_password

PASSWORDS = {"viewer": "view-pass-1", "operator": "op-pass-2", "commander": "cmd-pass-3"}
POSTS = {"viewer": "post-bridge-mid", "operator": None, "commander": None}


@functools.cache
def users_env() -> str:
    """CROWDFLOW_USERS for one user per role, named after the role."""
    return json.dumps([{"name": role, "role": role, "password_hash": hash_password(pw), "post": POSTS[role]}
                       for role, pw in PASSWORDS.items()])


def messages(text: str) -> list[dict]:
    """The messages in one /ws frame: a batch carries those that were queued together, in order."""
    msg = json.loads(text)
    return msg["items"] if msg["type"] == "batch" else [msg]
