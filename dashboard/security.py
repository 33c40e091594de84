"""The dashboard's security shell: server-side sessions, login limits shared in Redis, the
client's real address behind proxies, Origin checks, cookies, and the documented API.

* :class:`SessionStore` — a session is a random 256-bit token; Redis holds
  ``<p>:session:<sha256(token)>`` (user, role, post, a fingerprint of the password hash) with
  the session's TTL, and ``<p>:sessions:<user>`` the user's sessions. Logout deletes it at once
  (every dashboard instance sees it); a changed password hash or role (config) invalidates the
  user's sessions on their next use; :meth:`SessionStore.revoke_user` ends them all. Redis
  only ever sees hashes of tokens.
* :class:`CommandGuard` — commands per user, per address and overall, the same way.
* :class:`LoginGuard` — failed logins are limited with the ``limits`` library on Redis storage
  (so every dashboard instance shares the counts): per user name and address, per address (a
  spray over many names), per user name (a guess from many addresses) and overall. Moving
  windows: a lockout ends by itself when the window has passed, never for ever.
* :func:`client_address` — ``X-Forwarded-For`` is believed only from ``dashboard.trusted_proxies``.
* :func:`origin_allowed` — a browser's ``Origin`` on ``/ws`` and on every state-changing request
  must be the dashboard itself (or ``dashboard.allowed_origins``).
* :func:`document_api` — the OpenAPI lists every status code of every operation and each
  command kind's required fields (from :data:`crowdflow.vocab.COMMAND_FIELDS`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from limits import RateLimitItemPerMinute
from redis.asyncio import RedisCluster as aioredis_cluster
from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from crowdflow.site import DashboardUser
from crowdflow.vocab import COMMAND_FIELDS, COMMAND_KINDS, COMMAND_ROLE

from .auth import Session

# ----------------------------------------------------------------------------- sessions


def password_fingerprint(user: DashboardUser) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


class SessionStore:
    def __init__(self, redis_client, prefix: str, ttl_s: float):
        self.r = redis_client  # redis.asyncio client with decode_responses=True
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, token: str) -> str:
        return f"{self.prefix}:session:{hashlib.sha256(token.encode()).hexdigest()}"

    def _user_key(self, user: str) -> str:
        return f"{self.prefix}:sessions:{user}"

    async def issue(self, user: DashboardUser) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        key = self._key(token)
        ttl = int(self.ttl_s)
        # On a Redis Cluster the session and the user's index live in different slots, where a
        # MULTI/EXEC is refused: there the writes go as a plain pipeline (each key's own order kept).
        pipe = self.r.pipeline(transaction=not isinstance(self.r, aioredis_cluster))
        pipe.hset(key, mapping={"u": user.name, "r": user.role, "p": user.post or "", "pw": password_fingerprint(user),
                                "iat": f"{now:.3f}"})
        pipe.expire(key, ttl)
        pipe.zadd(self._user_key(user.name), {key: now + ttl})
        pipe.zremrangebyscore(self._user_key(user.name), "-inf", now)  # expired ones
        pipe.expire(self._user_key(user.name), ttl)
        await pipe.execute()
        return token, Session(user.name, user.role, now, now + self.ttl_s, user.post)

    async def check(self, token: str | None, users: dict[str, DashboardUser]) -> Session | None:
        """The session, or None when missing, unknown, revoked, expired, or its user is gone or
        changed role or password."""
        if not token or len(token) > 200:
            return None
        key = self._key(token)
        data = await self.r.hgetall(key)
        if not data:
            return None
        u = users.get(data.get("u", ""))
        if u is None or u.role != data.get("r") or password_fingerprint(u) != data.get("pw"):
            await self.r.delete(key)
            return None
        iat = float(data.get("iat", 0))
        return Session(u.name, u.role, iat, iat + self.ttl_s, u.post)

    async def revoke(self, token: str | None) -> bool:
        if not token or len(token) > 200:
            return False
        key = self._key(token)
        data = await self.r.hgetall(key)
        pipe = self.r.pipeline(transaction=not isinstance(self.r, aioredis_cluster))  # two slots on a cluster
        pipe.delete(key)
        if data.get("u"):
            pipe.zrem(self._user_key(data["u"]), key)
        res = await pipe.execute()
        return bool(res[0])

    async def revoke_user(self, user: str) -> int:
        """End every session of ``user`` (a password change, a lost phone)."""
        keys = await self.r.zrange(self._user_key(user), 0, -1)
        if not keys:
            return 0
        n = await self.r.delete(*keys)
        await self.r.delete(self._user_key(user))
        return n


# ----------------------------------------------------------------------------- login limits


def limits_uri(redis_url: str) -> str:
    """The ``limits`` storage URI for a redis-py URL (``redis://``, ``rediss://``, ``unix://``)."""
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url[len("unix://"):]
    return "async+" + redis_url


def limits_storage(redis_url: str, prefix: str):
    """One ``limits`` storage on the dashboard's Redis (shared by every instance), keys under
    ``<p>:limits``; redis+cluster:// → limits' own cluster storage."""
    storage = RedisClusterStorage if redis_url.startswith(("redis+cluster://", "rediss+cluster://")) else RedisStorage
    return storage(limits_uri(redis_url), implementation="redispy", key_prefix=f"{prefix}:limits",
                   wrap_exceptions=True)


class LoginGuard:
    """Failed-login limits shared by every dashboard instance (``limits`` on Redis)."""

    def __init__(self, redis_url: str, prefix: str, per_name_and_address: int, storage=None):
        self.storage = storage or limits_storage(redis_url, prefix)
        self.limiter = MovingWindowRateLimiter(self.storage)
        n = per_name_and_address
        self.rules = [  # (what, limit, identifiers taken from (name, address))
            ("name+address", RateLimitItemPerMinute(n), lambda name, addr: ("na", name, addr)),
            ("address", RateLimitItemPerMinute(4 * n), lambda name, addr: ("a", addr)),
            ("name", RateLimitItemPerMinute(4 * n), lambda name, addr: ("n", name)),
            ("overall", RateLimitItemPerMinute(40 * n), lambda name, addr: ("all",)),
        ]

    async def retry_after(self, name: str, addr: str) -> tuple[float, str | None]:
        """(seconds to wait, which limit) — (0, None) when a try is allowed now."""
        worst, which = 0.0, None
        for what, item, ids in self.rules:
            ident = ids(name, addr)
            if not await self.limiter.test(item, *ident):
                stats = await self.limiter.get_window_stats(item, *ident)
                wait = max(1.0, stats.reset_time - time.time())
                if wait > worst:
                    worst, which = wait, what
        return worst, which

    async def failed(self, name: str, addr: str) -> None:
        for _, item, ids in self.rules:
            await self.limiter.hit(item, *ids(name, addr))

    async def succeeded(self, name: str, addr: str) -> None:
        _, item, ids = self.rules[0]
        await self.limiter.clear(item, *ids(name, addr))


class CommandGuard:
    """Commands per user, per address and overall, shared by every dashboard instance
    (``limits`` moving windows on Redis): one stolen session, one script gone wrong or one
    address cannot flood control and its audit trail. Every command request that would be
    written counts (refused ones included); a refusal is a 429 with Retry-After, and the
    window moves on by itself."""

    def __init__(self, storage, per_user: int):
        self.limiter = MovingWindowRateLimiter(storage)
        n = per_user
        self.rules = [  # checked in this order; a request refused by one is not counted by the next
            ("user", RateLimitItemPerMinute(n), lambda user, addr: ("cu", user)),
            ("address", RateLimitItemPerMinute(2 * n), lambda user, addr: ("ca", addr)),
            ("overall", RateLimitItemPerMinute(10 * n), lambda user, addr: ("call",)),
        ]

    async def take(self, user: str, addr: str) -> tuple[float, str | None]:
        """Count one command; (seconds to wait, which limit) when it must be refused, else (0, None)."""
        for what, item, ids in self.rules:
            ident = ids(user, addr)
            if not await self.limiter.hit(item, *ident):
                stats = await self.limiter.get_window_stats(item, *ident)
                return max(1.0, stats.reset_time - time.time()), what
        return 0.0, None


# ----------------------------------------------------------------------------- proxies, origins, cookies


def parse_networks(cidrs: list[str]) -> list:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _trusted(host: str | None, nets: list) -> bool:
    if not host or not nets:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in n for n in nets)


def client_address(peer: str | None, forwarded_for: str | None, trusted: list) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy, in which case the
    right-most ``X-Forwarded-For`` hop that is not itself a trusted proxy."""
    addr = peer or "-"
    if not _trusted(peer, trusted) or not forwarded_for:
        return addr
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        addr = hop
        if not _trusted(hop, trusted):
            break
    return addr[:64]


@dataclass(frozen=True)
class RequestView:
    """What the security checks need of a request (HTTP or WebSocket)."""

    scheme: str  # http / https (ws / wss normalised)
    host: str  # Host header (or X-Forwarded-Host from a trusted proxy)
    client: str

    @classmethod
    def of(cls, conn, trusted: list) -> "RequestView":
        peer = conn.client.host if conn.client else None
        h = conn.headers
        scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
        host = h.get("host", "")
        if _trusted(peer, trusted):
            scheme = (h.get("x-forwarded-proto") or scheme).split(",")[0].strip().lower()
            host = (h.get("x-forwarded-host") or host).split(",")[0].strip()
        return cls(scheme, host, client_address(peer, h.get("x-forwarded-for"), trusted))


def origin_allowed(origin: str | None, view: RequestView, allowed: list[str]) -> bool:
    """No Origin (a script, not a browser) is allowed; a browser's must be the dashboard's own
    scheme://host[:port] or one of ``allowed``."""
    if origin is None:
        return True
    o = origin.strip().lower().rstrip("/")
    if o in {a.strip().lower().rstrip("/") for a in allowed}:
        return True
    try:
        parts = urlsplit(o)
    except ValueError:
        return False
    return bool(parts.scheme and parts.netloc) and parts.scheme == view.scheme and parts.netloc == view.host.lower()


STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


# ----------------------------------------------------------------------------- OpenAPI


def _command_body_schema(request_model) -> dict:
    """One schema per command kind, with that kind's required fields (oneOf on ``kind``).

    The field schemas come from the request model itself (derived from the Command record),
    so what is documented is exactly what is validated."""
    full = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = full.get("$defs", {})
    props = {k: v for k, v in full["properties"].items() if k != "kind"}
    variants = []
    for kind in COMMAND_KINDS:
        req = list(COMMAND_FIELDS[kind])
        own = dict(props)
        for name in req:  # a field the kind needs may not be null
            alts = [a for a in own[name].get("anyOf", []) if a.get("type") != "null"]
            if len(alts) == 1:
                own[name] = {**{k: v for k, v in own[name].items() if k not in ("anyOf", "default")}, **alts[0]}
        variants.append({
            "title": f"{kind} (needs role {COMMAND_ROLE[kind]})",
            "type": "object",
            "properties": {"kind": {"const": kind}, **own},
            "required": ["kind", *req],
            "additionalProperties": False,
        })
    return {"oneOf": variants, "discriminator": {"propertyName": "kind"}}, defs


ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"detail": {}}}}}}
STATUS = {
    400: "malformed: not JSON, or (commands) a field the kind needs is missing; the message says which",
    401: "no session, or it expired or was revoked",
    403: "the session's role may not do this, or the request came from a foreign Origin",
    404: "no such item",
    409: "refused: control refused the command, or it is dated too far ahead of the server's clock (the error says why)",
    422: "the request does not match the schema",
    429: "too many failed logins (login) or commands (per user, address or overall); Retry-After says when to try again",
    503: "Redis is unreachable; retry shortly",
    504: "control did not answer in time; the command stays queued",
}


# OpenAPI links (what a client does next with an answer): schemathesis's stateful phase follows
# them — a login's token used as the session, a command's id looked up, a zone's history.
LINKS = [  # (from path, method, statuses, link name, to path, method, parameters)
    ("/api/login", "post", ("200",), "WhoAmI", "/api/me", "get",
     {"header.Authorization": "Bearer {$response.body#/token}"}),
    ("/api/login", "post", ("200",), "CommandWithThisSession", "/api/commands", "post",
     {"header.Authorization": "Bearer {$response.body#/token}"}),
    ("/api/login", "post", ("200",), "Logout", "/api/logout", "post",
     {"header.Authorization": "Bearer {$response.body#/token}"}),
    ("/api/commands", "post", ("200", "409", "504"), "CommandResult", "/api/commands/{command_id}", "get",
     {"path.command_id": "$response.body#/command_id"}),
    ("/api/zones", "get", ("200",), "ZoneHistory", "/api/zones/{zone_id}/history", "get",
     {"path.zone_id": "$response.body#/0/zone_id"}),
]


def _link(schema: dict) -> None:
    paths = schema.get("paths", {})
    for src, method, statuses, name, dst, dst_method, params in LINKS:
        op, target = paths.get(src, {}).get(method), paths.get(dst, {}).get(dst_method)
        if op is None or target is None or "operationId" not in target:
            continue
        for status in statuses:
            resp = op.get("responses", {}).get(status)
            if resp is not None:
                resp.setdefault("links", {})[name] = {"operationId": target["operationId"], "parameters": params}


def document_api(app, public: set[str], command_model) -> None:
    """Wrap ``app.openapi`` so that every operation lists every status it can answer, and the
    command body lists each kind's required fields. ``public``: paths needing no session."""
    base = app.openapi

    def openapi():
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base()
        for path, ops in schema.get("paths", {}).items():
            for method, op in ops.items():
                codes = {503}
                if path not in public:
                    codes |= {401, 403}
                if method.upper() in STATE_CHANGING:
                    codes |= {403, 422}
                if op.get("parameters") or op.get("requestBody"):
                    codes.add(422)
                if op.get("requestBody"):
                    codes.add(400)  # a body that is not JSON at all
                if "{" in path or path == "/api/basemap":  # (basemap: none configured or unusable)
                    codes.add(404)
                if path == "/api/login":
                    codes |= {401, 429}
                if path == "/api/commands":
                    codes |= {400, 409, 429, 504}
                    body, defs = _command_body_schema(command_model)
                    op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
                    comps = schema.setdefault("components", {}).setdefault("schemas", {})
                    for name, d in defs.items():
                        comps.setdefault(name, d)
                resp = op.setdefault("responses", {})
                for code in sorted(codes):
                    entry = resp.setdefault(str(code), {"description": STATUS[code]})
                    entry.setdefault("content", ERROR["content"]) if code != 200 else None
        _link(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
