"""Dashboard access, pure core: salted hashes, users from config/env, sessions, login limits."""

from __future__ import annotations

import copy
import json
import time

import pytest

from dashboard.auth import AuthError, LoginLimiter, Sessions, hash_password, load_users, role_at_least, verify_password

from .conftest import problems_of


def test_hash_is_salted_and_verifies():
    a, b = hash_password("s3cret"), hash_password("s3cret")
    assert a != b and a.startswith("scrypt$16384$8$1$")  # fresh salt each time
    assert "s3cret" not in a
    assert verify_password("s3cret", a) and verify_password("s3cret", b)
    assert not verify_password("s3cret!", a)
    assert not verify_password("s3cret", "scrypt$garbage")  # malformed hash: refused, no crash
    with pytest.raises(AuthError):
        hash_password("")


def test_users_from_env_override_config_and_errors_name_the_entry(site):
    h = hash_password("x")
    users = load_users(site, json.dumps([{"name": "li.wei", "role": "commander", "password_hash": h}]))
    assert users["li.wei"].role == "commander"
    with pytest.raises(AuthError, match=r"CROWDFLOW_USERS\[0\]\.role"):
        load_users(site, json.dumps([{"name": "a", "role": "boss", "password_hash": h}]))
    with pytest.raises(AuthError, match=r"CROWDFLOW_USERS\[0\]\.password_hash"):  # plaintext refused
        load_users(site, json.dumps([{"name": "a", "role": "viewer", "password_hash": "hunter2"}]))
    with pytest.raises(AuthError, match="not JSON"):
        load_users(site, "[{")


def test_roles_are_ordered():
    assert role_at_least("commander", "operator") and role_at_least("operator", "viewer")
    assert not role_at_least("viewer", "operator") and not role_at_least("operator", "commander")


def test_sessions_are_signed_expire_and_follow_the_user_list(site):
    h = hash_password("x")
    users = load_users(site, json.dumps([{"name": "wang", "role": "operator", "password_hash": h}]))
    s = Sessions(ttl_s=1, secret="k")
    token, sess = s.issue(users["wang"])
    assert s.check(token, users).role == "operator"
    assert s.check(token[:-2] + "xx", users) is None  # forged signature
    assert Sessions(ttl_s=1, secret="other").check(token, users) is None  # another secret
    demoted = load_users(site, json.dumps([{"name": "wang", "role": "viewer", "password_hash": h}]))
    assert s.check(token, demoted) is None  # role changed: log in again
    time.sleep(2.1)
    assert s.check(token, users) is None  # expired


def test_login_limiter_blocks_after_failures_per_key():
    lim = LoginLimiter(max_failures=3, window_s=60)
    for i in range(3):
        assert lim.retry_after("a|1.2.3.4", 100 + i) == 0
        lim.failed("a|1.2.3.4", 100 + i)
    assert lim.retry_after("a|1.2.3.4", 103) == pytest.approx(57)
    assert lim.retry_after("b|1.2.3.4", 103) == 0  # other keys unaffected
    assert lim.retry_after("a|1.2.3.4", 161) == 0  # the window slid past the first failure



def test_site_basemap_and_dashboard_sections_validate(site, raw):
    assert {a.id for a in site.basemap.water} == {"jialing-river"}
    assert site.basemap.bridges and site.basemap.buildings
    d = copy.deepcopy(raw)
    d["basemap"]["water"][0]["polygon"] = [[106.57, 29.56], [106.58, 29.57]]
    d["dashboard"]["users"] = [{"name": "a", "role": "viewer", "password_hash": "plain"}]
    d["dashboard"]["tiles"] = {"url": "https://t/{z}/{x}/{y}.png", "datum": "bd09"}
    got = problems_of(d)
    assert any(p.startswith("basemap.water[0].polygon: ring has 2 points") for p in got), got
    assert any(p.startswith("dashboard.users[0].password_hash:") for p in got), got
    assert any(p.startswith("dashboard.tiles.datum:") for p in got), got
    d = copy.deepcopy(raw)
    d["basemap"]["buildings"].append(copy.deepcopy(d["basemap"]["buildings"][0]))  # a second with the same id
    n = len(d["basemap"]["buildings"]) - 1
    first = d["basemap"]["buildings"][0]["id"]
    d["dashboard"]["users"] = [{"name": "a", "role": "viewer", "password_hash": hash_password("x"), "post": "nowhere"}]
    got = problems_of(d)
    assert f"basemap.buildings[{n}].id: duplicate id '{first}' (also basemap.buildings[0])" in got
    assert "dashboard.users[0].post: unknown post 'nowhere'" in got


def test_gcj02_shift_at_the_edge_is_about_half_a_kilometre_south_east(site):
    from dashboard.geo import site_geojson, wgs84_to_gcj02

    lon, lat = 106.5795, 29.5645
    glon, glat = wgs84_to_gcj02(lon, lat)
    east_m, north_m = (glon - lon) * 111_320 * 0.8698, (glat - lat) * 110_574
    assert 300 < (east_m**2 + north_m**2) ** 0.5 < 700 and east_m > 0 and north_m < 0
    assert wgs84_to_gcj02(2.35, 48.85) == (2.35, 48.85)  # outside China: unchanged
    w, g = site_geojson(site, "wgs84"), site_geojson(site, "gcj02")
    assert w["features"][0]["geometry"] != g["features"][0]["geometry"]
    kinds = {f["properties"]["kind"] for f in w["features"]}
    assert {"water", "building", "bridge", "zone", "camera", "road", "gate", "post"} <= kinds


def test_hash_password_command_prints_a_hash_that_verifies():
    import subprocess
    import sys

    from .conftest import REPO

    out = subprocess.run([sys.executable, "-m", "crowdflow.cli", "hash-password"], input="桥头 pass\n",
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    h = out.stdout.strip()
    assert verify_password("桥头 pass", h) and "桥头" not in h
    empty = subprocess.run([sys.executable, "-m", "crowdflow.cli", "hash-password"], input="\n",
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert empty.returncode == 2 and "empty password" in empty.stderr
