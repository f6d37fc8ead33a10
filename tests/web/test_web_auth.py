"""Logins, sessions, CSRF, tokens and cookie flags of ``expertloop serve``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from web_helpers import PASSWORDS, csrf_of, login, page_csrf

from expertloop.store import auth


def test_wrong_password_then_lockout(served):
    store, app, _ = served
    c = TestClient(app)
    r = login(c, "bob", "not-the-password")
    assert r.status_code == 200 and "wrong user name or password" in r.text
    assert "el_session" not in c.cookies
    # unknown users get the same message (no user enumeration)
    assert "wrong user name or password" in login(c, "nobody", "whatever1").text
    for _ in range(auth.MAX_FAILED - 1):
        r = login(c, "bob", "not-the-password")
    assert "too many failed logins" in r.text
    # locked: even the right password is refused now
    r = login(c, "bob")
    assert "too many failed logins" in r.text and "el_session" not in c.cookies


@pytest.mark.parametrize("served", ["sqlite"], indirect=True)  # HTTP only: no DB specifics
def test_login_rate_limited_per_address(served):
    from expertloop.web.app import WebConfig, create_app

    store, _, root = served
    app = create_app(store, WebConfig(image_roots=[root], login_failures_per_ip=3))
    c = TestClient(app)
    for name in ("a1", "a2", "a3"):  # different (unknown) accounts, one address
        page = c.get("/login")
        c.post("/login", data={"username": name, "password": "x" * 9,
                               "csrf": csrf_of(page.text)})
    page = c.get("/login")
    r = c.post("/login", data={"username": "ada", "password": PASSWORDS["ada"],
                               "csrf": csrf_of(page.text)})
    assert r.status_code == 429


@pytest.mark.parametrize("served", ["sqlite"], indirect=True)  # HTTP only: no DB specifics
def test_session_cookie_flags(served):
    from expertloop.web.app import WebConfig, create_app

    store, app, root = served
    c = TestClient(app)
    page = c.get("/login")
    r = c.post("/login", data={"username": "bob", "password": PASSWORDS["bob"],
                               "csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("el_session="))
    low = cookie.lower()
    assert "httponly" in low and "samesite=strict" in low and "path=/" in low
    assert "secure" not in low.replace("el_session", "")
    # behind TLS
    app2 = create_app(store, WebConfig(image_roots=[root], secure_cookies=True))
    c2 = TestClient(app2, base_url="https://testserver")
    page = c2.get("/login")
    r = c2.post("/login", data={"username": "bob", "password": PASSWORDS["bob"],
                                "csrf": csrf_of(page.text)}, follow_redirects=False)
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("el_session="))
    assert "; secure" in cookie.lower()
    # security headers on every page
    h = c.get("/login").headers
    assert "script-src 'self'" in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("served", ["sqlite"], indirect=True)  # HTTP only: no DB specifics
def test_not_logged_in(served):
    _, app, _ = served
    c = TestClient(app)
    r = c.get("/c/1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/c/1")
    assert c.get("/api/collections").status_code == 401
    assert c.get("/img/1/1").status_code == 401
    c.cookies.set("el_session", "forged")
    forged = c.post("/api/c/1/annotations", json={"image_id": 1, "label": "normal"})
    assert forged.status_code == 401


def _post_routes(app):
    out = []
    for route in app.routes:
        if "POST" in getattr(route, "methods", ()) and route.path != "/login":
            path = route.path.replace("{cid}", "1").replace("{token_id}", "1") \
                .replace("{uid}", "2")
            out.append(path)
    return out


def test_every_post_needs_the_csrf_token(served, client_for):
    store, app, _ = served
    c = client_for("ada")
    routes = _post_routes(app)
    assert {"/logout", "/api/c/1/annotations", "/c/1/review", "/admin/users",
            "/account/password"} <= set(routes)
    before = store.audit_log("ada", limit=1)[0]
    for path in routes:
        for headers, data in (({}, {}), ({"X-CSRF-Token": "forged"}, {"csrf": "forged"})):
            r = c.post(path, headers=headers, data={**data, "name": "eve",
                                                    "password": "eve-secret-1"})
            assert r.status_code == 403, (path, r.status_code, r.text[:200])
            assert "CSRF" in r.text
    assert store.audit_log("ada", limit=1)[0] == before  # nothing was written
    assert "eve" not in {u.name for u in store.users()}
    # the login form has its own token (double-submit cookie)
    fresh = TestClient(app)
    fresh.get("/login")
    r = fresh.post("/login", data={"username": "ada", "password": PASSWORDS["ada"]})
    assert r.status_code == 403
    # and with the right token the same request works
    token = page_csrf(c, "/admin")
    r = c.post("/admin/users", data={"csrf": token, "name": "eve", "password": "eve-secret-1"})
    assert r.status_code == 200 and "eve" in {u.name for u in store.users()}


def test_logout_ends_the_session(served, client_for):
    c = client_for("bob")
    secret = c.cookies["el_session"]
    r = c.post("/logout", data={"csrf": page_csrf(c)})
    assert r.status_code == 200 and "Log in" in r.text
    c.cookies.set("el_session", secret)
    assert c.get("/api/me").status_code == 401


def test_initial_password_must_be_changed(served, client_for):
    store, app, _ = served
    admin = client_for("ada")
    r = admin.post("/admin/users", data={"csrf": page_csrf(admin, "/admin"), "name": "dee",
                                         "role": "annotator", "expertise": "us, echo",
                                         "password": "initial-pw-1"})
    assert r.status_code == 200
    assert store.user("dee").expertise == ["us", "echo"]
    c = TestClient(app)
    page = c.get("/login")
    r = c.post("/login", data={"username": "dee", "password": "initial-pw-1",
                               "csrf": csrf_of(page.text)})
    assert r.url.path == "/account" and "choose your own" in r.text
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/account"
    token = csrf_of(c.get("/account").text)
    bad = c.post("/account/password", data={"csrf": token, "old": "wrong-old-1",
                                            "new": "mine-now-12", "again": "mine-now-12"})
    assert bad.status_code == 403
    ok = c.post("/account/password", data={"csrf": token, "old": "initial-pw-1",
                                           "new": "mine-now-12", "again": "mine-now-12"})
    assert ok.status_code == 200 and ok.url.path == "/" and "My tasks" in ok.text
    assert auth.login(store, "dee", "mine-now-12").must_change is False


def test_no_token_or_api_use_before_the_initial_password_is_changed(served, client_for):
    store, app, _ = served
    store.add_user("ada", "dee")
    auth.set_password(store, "ada", "dee", "initial-pw-1")  # admin-set: must change
    store.assign("ada", "scans", "dee")
    token = auth.create_token(store, "ada", "dee", name="made by the admin")
    api = TestClient(app)
    hdr = {"Authorization": f"Bearer {token}"}
    before = store.audit_log("ada", limit=1)[0]
    for method, path, kw in (("GET", "/api/me", {}), ("GET", "/api/collections", {}),
                             ("GET", "/api/c/1/images", {}), ("GET", "/img/1/1", {}),
                             ("GET", "/", {}), ("GET", "/account", {}),
                             ("POST", "/api/c/1/annotations",
                              {"json": {"image_id": 1, "label": "normal"}}),
                             ("POST", "/account/tokens", {"data": {"name": "x"}})):
        r = api.request(method, path, headers=hdr, follow_redirects=False, **kw)
        assert r.status_code == 403, (path, r.status_code)
        assert "initial password" in r.text, path
    assert store.annotations("ada", "scans") == []
    assert store.audit_log("ada", limit=1)[0] == before  # nothing written
    # the browser session of that account reaches its account page, not the API
    c = TestClient(app)
    page = c.get("/login")
    c.post("/login", data={"username": "dee", "password": "initial-pw-1",
                           "csrf": csrf_of(page.text)})
    r = c.get("/api/me")
    assert r.status_code == 403 and "initial password" in r.json()["detail"]
    r = c.post("/api/c/1/annotations", json={"image_id": 1, "label": "normal"},
               headers={"X-CSRF-Token": csrf_of(c.get("/account").text)})
    assert r.status_code == 403 and store.annotations("ada", "scans") == []
    # once the password is the user's own, the same token works
    r = c.post("/account/password", data={"csrf": csrf_of(c.get("/account").text),
                                          "old": "initial-pw-1", "new": "mine-now-12",
                                          "again": "mine-now-12"})
    assert r.status_code == 200 and r.url.path == "/"
    assert api.get("/api/me", headers=hdr).json()["name"] == "dee"
    r = api.post("/api/c/1/annotations", headers=hdr, json={"image_id": 1, "label": "normal"})
    assert r.status_code == 200 and r.json()["annotator"] == "dee"
    # an admin resetting the password makes it initial again: the token stops working
    auth.set_password(store, "ada", "dee", "reset-pw-123")
    assert api.get("/api/me", headers=hdr).status_code == 403


def test_api_tokens(served, client_for):
    store, app, _ = served
    c = client_for("bob")
    r = c.post("/account/tokens", data={"csrf": page_csrf(c, "/account"), "name": "script"})
    import re

    token = re.search(r'id="new-token">([^<]+)<', r.text).group(1)
    api = TestClient(app)  # no cookie at all
    hdr = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/me", headers=hdr).json()["name"] == "bob"
    assert [x["name"] for x in api.get("/api/collections", headers=hdr).json()] == \
        ["cells", "scans"]
    # a token request carries no cookie, so it needs no CSRF token
    r = api.post("/api/c/1/annotations", headers=hdr,
                 json={"image_id": 1, "label": "abnormal", "time_spent": 2.5})
    assert r.status_code == 200 and r.json()["annotator"] == "bob"
    # only the hash is stored
    from sqlalchemy import select

    from expertloop.store.models import ApiToken

    with store._read() as s:
        assert token not in {t.token_hash for t in s.scalars(select(ApiToken))}
    tid = auth.tokens(store, "bob")[0]["id"]
    r = c.post(f"/account/tokens/{tid}/revoke", data={"csrf": page_csrf(c, "/account")})
    assert r.status_code == 200
    r = api.get("/api/me", headers=hdr)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    old = auth.create_token(store, "bob", expires_in=timedelta(seconds=-1))
    r = api.get("/api/me", headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    r = api.get("/api/me", headers={"Authorization": "Bearer elt_forged"})
    assert r.status_code == 401


@pytest.mark.parametrize("served", ["sqlite"], indirect=True)  # HTTP only: no DB specifics
@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "\\\\evil"])
def test_no_open_redirect_after_login(served, target):
    _, app, _ = served
    c = TestClient(app)
    page = c.get("/login")
    r = c.post("/login", data={"username": "bob", "password": PASSWORDS["bob"],
                               "csrf": csrf_of(page.text), "next": target},
               follow_redirects=False)
    assert r.headers["location"] == "/"


def test_serve_help_and_start_say_tls_terminates_at_the_proxy():
    from expertloop.cli import build_parser
    from expertloop.web.app import exposure_warning

    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None) and "serve" in a.choices)
    text = sub.choices["serve"].format_help()
    # no example exposes the plain-HTTP port with --proxy; TLS is said to end at the proxy
    assert not [ln for ln in text.splitlines() if "0.0.0.0" in ln and "--proxy" in ln]
    assert "TLS terminates at a reverse proxy" in text and "plain HTTP" in text
    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert exposure_warning("::1") is None
    assert "plain HTTP" in exposure_warning("0.0.0.0")
    assert "--proxy" in exposure_warning("192.168.1.5")
