"""Per-edge credentials: one Redis ACL user and one signing key per camera's edge agent.

``crowdflow edge-users`` makes, for every camera of the site, a Redis user
``<prefix>-edge-<camera>`` that may only append to the observation stream of the camera's
partition (``XADD``; no read, no delete, no other key; ``SET`` of its own snapshot key when
``edge.snapshots`` is on; ``ZMSCORE`` of its own camera's applied-records set
``<p>:obs:seen:<camera>``, read-only, so that it can send again what went missing before control
applied it: edge/spool.py), with a random 256-bit password. The same password, through an HMAC,
gives the key the agent signs its records with (``CROWDFLOW_EDGE_KEY``); control holds only the
derived keys (``edge-keys.json``), so the file on the control host cannot log in to Redis as an
edge, and a record for a camera is applied only when signed with the key of that camera's user
(``sig: …`` dead letter otherwise). Redis does not tell a reader which user wrote an entry;
the signature, bound to the user's password, does.

Files written (mode 0600) under ``<data dir>/edge-credentials`` (``--out``):

* ``credentials.json`` — camera → {user, password}: the source of truth; a re-run keeps the
  passwords (``--rotate`` makes new ones) and adds users for new cameras;
* ``edge-keys.json`` — camera → signing key, for control (its default ``CROWDFLOW_EDGE_KEYS_FILE``);
* ``<camera>.env`` — ``REDIS_URL`` (with the user and password) and ``CROWDFLOW_EDGE_KEY`` for
  that camera's gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

SIGNING_INFO = b"crowdflow edge signing key v1"


def edge_user(prefix: str, camera_id: str) -> str:
    """The Redis user of a camera's edge agent (ACL user names may not contain spaces)."""
    return f"{prefix}-edge-{camera_id}".replace(" ", "_")


def signing_key(password: str) -> str:
    """The key an edge signs with, derived from its Redis password (one-way)."""
    return hmac.new(password.encode(), SIGNING_INFO, hashlib.sha256).hexdigest()


def acl_rules(password: str, obs_stream: str, snapshot_key: str | None = None, cluster: bool = False,
              seen_key: str | None = None) -> list[str]:
    """``ACL SETUSER`` rules for an edge: append to its observation stream and ask which of its
    own records control applied (``seen_key``, read-only), nothing else."""
    rules = ["reset", "on", f">{password}", f"%W~{obs_stream}", "resetchannels", "-@all", "+xadd", "+ping"]
    if seen_key:
        rules += [f"%R~{seen_key}", "+zmscore"]
    if snapshot_key:
        rules += [f"~{snapshot_key}", "+set"]
    if cluster:  # the cluster client's topology queries and the producer's WAIT for a replica
        rules += ["+cluster|slots", "+cluster|shards", "+cluster|nodes", "+command", "+readonly", "+wait", "+info"]
    return rules


def url_for(base_url: str, user: str, password: str) -> str:
    """``base_url`` (the address edges use to reach Redis) with this user's credentials."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def provision(r, site, keys, out_dir: Path, edge_url: str, rotate: bool = False,
              cameras: list[str] | None = None, cluster: bool = False) -> dict[str, dict]:
    """Create or update every camera's edge user on ``r`` (an admin connection) and write the
    files. Returns camera → {user, password}. ``keys``: the site's :class:`crowdflow.bus.Keys`."""
    from .site.partitions import camera_keys

    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    cred_path = out_dir / "credentials.json"
    creds: dict[str, dict] = json.loads(cred_path.read_text(encoding="utf-8")) if cred_path.exists() else {}
    by_camera = camera_keys(site, keys)
    wanted = cameras or [c.id for c in site.cameras]
    unknown = [c for c in wanted if c not in {cam.id for cam in site.cameras}]
    if unknown:
        raise ValueError(f"no camera {', '.join(unknown)} in the site file")
    for cam in wanted:
        k = by_camera.get(cam, keys)
        entry = creds.get(cam)
        if entry is None or rotate:
            entry = {"user": edge_user(keys.prefix, cam), "password": secrets.token_urlsafe(32)}
        creds[cam] = entry
        snap = k.snapshot(cam) if site.edge.snapshots else None
        rules = acl_rules(entry["password"], k.obs, snap, cluster, seen_key=k.obs_seen(cam))
        for node in (_every_node(r) if cluster else [r]):  # ACL users are per node
            node.execute_command("ACL", "SETUSER", entry["user"], *rules)
        _write_private(out_dir / f"{cam}.env",
                       f"# edge agent of camera {cam}: its own Redis user (append to {k.obs} only) and signing key\n"
                       f"REDIS_URL={url_for(edge_url, entry['user'], entry['password'])}\n"
                       f"CROWDFLOW_EDGE_KEY={signing_key(entry['password'])}\n")
    _write_private(cred_path, json.dumps(creds, indent=1, sort_keys=True))
    _write_private(out_dir / "edge-keys.json",
                   json.dumps({cam: signing_key(e["password"]) for cam, e in sorted(creds.items())}, indent=1))
    return creds


def _every_node(rc) -> list:
    """A plain client for every node of a cluster, masters and replicas (``CLUSTER NODES``),
    with the cluster client's credentials: a replica promoted later must know the users too."""
    import redis

    kw = {k: v for k, v in rc.nodes_manager.connection_kwargs.items()
          if k in ("username", "password", "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "socket_timeout")}
    out = []
    for addr in rc.cluster_nodes():
        host, _, port = addr.rpartition(":")
        out.append(redis.Redis(host=host.strip("[]"), port=int(port.split("@")[0]), **kw))
    return out


def default_keys_file(data_dir: Path) -> Path:
    return data_dir / "edge-credentials" / "edge-keys.json"
