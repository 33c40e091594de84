"""Who may do what on the dashboard: users, salted password hashes, sessions, login limits.

Pure core (no I/O; time passed in where it matters), used by the FastAPI shell in ``app.py``.

* Users come from the site file (``dashboard.users``) and ``CROWDFLOW_USERS`` (a JSON list of
  the same objects), which adds to and overrides the file by name. Passwords exist only as
  salted scrypt hashes made by :func:`hash_password` (``crowdflow hash-password``).
* The dashboard keeps sessions server-side in Redis (``dashboard.security.SessionStore``: logout
  and password changes revoke them) and limits logins with the ``limits`` library on Redis
  (``dashboard.security.LoginGuard``). A session token travels as the HttpOnly cookie
  :data:`COOKIE` (browsers) or as ``Authorization: Bearer`` (scripts).
* :class:`Sessions` (signed, stateless tokens) and :class:`LoginLimiter` (per process) are the
  earlier, single-instance forms, kept for tools; the dashboard no longer uses them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pydantic import TypeAdapter, ValidationError

from crowdflow.site import DashboardUser, Site
from crowdflow.vocab import role_allows

COOKIE = "cf_session"

# scrypt cost: n=2^14, r=8, p=1 takes ~50 ms and 16 MiB here: cheap for a login, dear for a guesser.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class AuthError(ValueError):
    """A user list or hash that cannot be used; the message says where."""


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$<salt b64>$<hash b64>`` with a fresh 16-byte salt."""
    if not password:
        raise AuthError("empty password")
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(dk)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, dk = stored.split("$")
        if algo != "scrypt":
            return False
        salt_b, dk_b = base64.b64decode(salt), base64.b64decode(dk)
        got = hashlib.scrypt(password.encode(), salt=salt_b, n=int(n), r=int(r), p=int(p),
                             dklen=len(dk_b), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, dk_b)


_DUMMY: list[str] = []


def dummy_hash() -> str:
    """A hash of a random password with the same cost as real ones: a login for an unknown user
    verifies against it, so that it takes as long as a wrong password for a real user."""
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_hex(16)))
    return _DUMMY[0]


_USERS = TypeAdapter(list[DashboardUser])


def load_users(site: Site, env: str | None = None) -> dict[str, DashboardUser]:
    """The site's users, then ``CROWDFLOW_USERS`` (JSON list) on top; errors name the entry."""
    users = {u.name: u for u in site.dashboard.users}
    raw = env if env is not None else os.environ.get("CROWDFLOW_USERS", "")
    if raw.strip():
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise AuthError(f"CROWDFLOW_USERS: not JSON ({e.msg} at char {e.pos})") from None
        try:
            extra = _USERS.validate_python(data)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            raise AuthError(f"CROWDFLOW_USERS{where}: {first['msg']}") from None
        users.update({u.name: u for u in extra})
    return users


role_at_least = role_allows


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    issued_at: float
    expires_at: float
    post: str | None = None


class Sessions:
    """Signed, expiring session tokens. The secret comes from ``CROWDFLOW_SESSION_SECRET`` when
    set (so sessions survive a restart and several dashboards agree), else it is random per
    process (a restart then logs everyone out)."""

    def __init__(self, ttl_s: float, secret: str | None = None):
        self.ttl_s = ttl_s
        secret = secret or os.environ.get("CROWDFLOW_SESSION_SECRET") or secrets.token_hex(32)
        self._s = URLSafeTimedSerializer(secret, salt="crowdflow-session")

    def issue(self, user: DashboardUser) -> tuple[str, Session]:
        now = time.time()
        token = self._s.dumps({"u": user.name, "r": user.role, "p": user.post})
        return token, Session(user.name, user.role, now, now + self.ttl_s, user.post)

    def check(self, token: str | None, users: dict[str, DashboardUser]) -> Session | None:
        """The session, or None when missing, forged, expired, or the user is gone/changed role."""
        if not token:
            return None
        try:
            data, signed_at = self._s.loads(token, max_age=self.ttl_s, return_timestamp=True)
        except (SignatureExpired, BadSignature):
            return None
        u = users.get(data.get("u"))
        if u is None or u.role != data.get("r"):
            return None
        t = signed_at.timestamp()
        return Session(u.name, u.role, t, t + self.ttl_s, u.post)


class LoginLimiter:
    """At most ``max_failures`` failed logins per key (name, address) in a sliding minute."""

    def __init__(self, max_failures: int, window_s: float = 60.0):
        self.max_failures = max_failures
        self.window_s = window_s
        self._fails: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        q = self._fails.get(key)
        if not q:
            return 0.0
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) < self.max_failures:
            return 0.0
        return q[0] + self.window_s - now

    def failed(self, key: str, now: float) -> None:
        self._fails.setdefault(key, deque()).append(now)
        if len(self._fails) > 10_000:  # bound memory under a spray of names
            for k in [k for k, q in self._fails.items() if not q or q[-1] <= now - self.window_s]:
                del self._fails[k]

    def succeeded(self, key: str) -> None:
        self._fails.pop(key, None)
