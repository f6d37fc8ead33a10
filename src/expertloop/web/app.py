"""The FastAPI application behind ``expertloop serve``.

Every request runs as a proven identity (a server-side session cookie, or an
API token in ``Authorization: Bearer ...``) and every read or write goes
through the same :class:`~expertloop.store.Store` calls as napari, so the
store's permission rules apply object by object. An object the asker may not
read answers 404, exactly like one that does not exist. State-changing
requests made with a session cookie must carry the session's CSRF token (form
field ``csrf`` or header ``X-CSRF-Token``); API-token requests carry no cookie
and need none. See ``docs/web.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders

from expertloop.store import (
    NotFound,
    PermissionDenied,
    Store,
    StoreError,
    StoreValidationError,
    auth,
    format_report,
    review_source,
)
from expertloop.store.core import expand_images
from expertloop.web.render import ImageRefused, Renderer, resolve_inside

HERE = Path(__file__).parent
SESSION_COOKIE = "el_session"
LOGIN_COOKIE = "el_login"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PAGE_SIZES = (10, 20, 50, 100)
#: what a browser session with an admin-set initial password may still do
BEFORE_PASSWORD_CHANGE = ("/account", "/account/password", "/logout")
MUST_CHANGE = ("this account still has the initial password an admin set: log in on the "
               "web page and choose your own password before using the API or a token")
CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@dataclass
class WebConfig:
    """Server settings.

    ``image_roots``: folders whose files may be shown (anything else is refused);
    ``secure_cookies``: mark cookies ``Secure`` (set it behind TLS; requests that
    arrive as https get it anyway); ``login_failures_per_ip``: failed logins from one
    client address within ``login_window_s`` before further attempts get 429.
    """

    image_roots: Sequence[str | Path] = ()
    secure_cookies: bool = False
    session_hours: float = auth.SESSION_HOURS
    login_failures_per_ip: int = 20
    login_window_s: float = 600.0
    cache_items: int = 256
    max_side: int = 4096  # longest side of a rendered view (bigger images are reduced)


class LoginRequired(Exception):
    """Not logged in (or must change the password first): redirect pages there."""

    def __init__(self, target: str = "/login") -> None:
        super().__init__(target)
        self.target = target


@dataclass
class _RateLimiter:
    limit: int
    window: float
    hits: dict = field(default_factory=lambda: defaultdict(deque))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def blocked(self, key: str) -> bool:
        with self.lock:
            q = self.hits[key]
            while q and q[0] < time.monotonic() - self.window:
                q.popleft()
            return len(q) >= self.limit

    def fail(self, key: str) -> None:
        with self.lock:
            self.hits[key].append(time.monotonic())


@dataclass(frozen=True)
class Caller:
    """Who is asking, and how (a session carries a CSRF token; a token does not)."""

    identity: auth.Identity
    csrf: str | None

    @property
    def id(self) -> int:
        return self.identity.user_id

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def is_admin(self) -> bool:
        return self.identity.role == "admin"


class _SecurityHeaders:
    """Security headers on every response: a plain ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` costs an extra task and body streaming per request)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static")

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", CSP)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("X-Frame-Options", "DENY")
                if not static:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(store: Store, config: WebConfig | None = None) -> FastAPI:
    """The web app over ``store`` (kept open for the app's lifetime)."""
    import jinja2

    config = config or WebConfig()
    if not config.image_roots and store.project_dir is not None:
        config.image_roots = [store.project_dir]
    renderer = Renderer(config.image_roots, cache_items=config.cache_items,
                        max_side=config.max_side)
    limiter = _RateLimiter(config.login_failures_per_ip, config.login_window_s)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    app = FastAPI(title="expertloop annotation service", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.store, app.state.config, app.state.renderer = store, config, renderer
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    # ------------------------------------------------------------ plumbing
    app.add_middleware(_SecurityHeaders)

    def is_api(request: Request) -> bool:
        return request.url.path.startswith(("/api/", "/img/"))

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired):
        if is_api(request) or request.method not in SAFE_METHODS:
            return JSONResponse({"detail": "not logged in"}, status_code=401)
        if exc.target != "/login":
            return RedirectResponse(exc.target, status_code=303)
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if is_api(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        return render(request, "error.html", None, status_code=exc.status_code,
                    status=exc.status_code, message=exc.detail)

    def secure(request: Request) -> bool:
        return config.secure_cookies or request.url.scheme == "https"

    def render(request: Request, name: str, me: Caller | None, status_code: int = 200,
             **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(me=me, csrf=me.csrf if me else None, **ctx)
        return HTMLResponse(html, status_code=status_code)

    def caller(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            try:
                return Caller(auth.check_token(store, header[7:].strip()), None)
            except auth.AuthError as exc:
                raise HTTPException(401, str(exc)) from exc
        secret = request.cookies.get(SESSION_COOKIE)
        if not secret:
            raise LoginRequired()
        try:
            identity, csrf = auth.session(store, secret)
        except auth.AuthError as exc:
            raise LoginRequired() from exc
        return Caller(identity, csrf)

    def reader(request: Request, me: Caller = Depends(caller)) -> Caller:
        """``me`` unless the account still has its admin-set initial password: then a
        browser session may only open its account page to change it (pages redirect
        there), and every API, image or API-token request is refused with 403."""
        if not me.identity.must_change:
            return me
        if me.csrf is not None and not is_api(request):
            if request.url.path not in BEFORE_PASSWORD_CHANGE:
                raise LoginRequired("/account")
            return me
        raise HTTPException(403, MUST_CHANGE)

    async def body(request: Request) -> dict:
        """The request's form or JSON body as a dict (lists for repeated fields)."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                data = await request.json()
            except ValueError as exc:
                raise HTTPException(400, "the body is not valid JSON") from exc
            if not isinstance(data, dict):
                raise HTTPException(400, "the body must be a JSON object")
            return data
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            return {k: (form.getlist(k) if len(form.getlist(k)) > 1 else form[k])
                    for k in form.keys()}
        return {}

    def writer(request: Request, data: dict = Depends(body),
               me: Caller = Depends(reader)) -> Caller:
        """A caller allowed to change state: session requests need the CSRF token."""
        if me.csrf is not None:
            sent = request.headers.get("x-csrf-token") or data.get("csrf") or ""
            if not isinstance(sent, str) or not hmac.compare_digest(sent, me.csrf):
                raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        return me

    # SQLite has one writer at a time: queue this server's annotation writes on a
    # lock instead of letting 20 threads poll SQLite's busy handler (long tails)
    write_lock = threading.Lock() if store.dialect == "sqlite" else None

    def save_many(me: Caller, cid: int, items: list[dict]) -> int:
        if write_lock is None:
            return store.annotate_many(me.id, cid, items)
        with write_lock:
            return store.annotate_many(me.id, cid, items)

    def admin(me: Caller) -> None:
        if not me.is_admin:
            raise HTTPException(403, "only admins can do this")

    def visible(fn, *args, **kwargs):
        """Run a store read; objects the caller may not see are 404, never data."""
        try:
            return fn(*args, **kwargs)
        except (NotFound, PermissionDenied) as exc:
            raise HTTPException(404, "not found (or not assigned to you)") from exc

    def checked(fn, *args, **kwargs):
        """Run a store write; refusals become 400/403/404 with the store's message."""
        try:
            return fn(*args, **kwargs)
        except StoreValidationError as exc:
            raise HTTPException(400, str(exc)) from exc
        except NotFound as exc:
            raise HTTPException(404, "not found (or not assigned to you)") from exc
        except PermissionDenied as exc:
            raise HTTPException(403, str(exc)) from exc

    def set_session_cookie(request: Request, response: Response, secret: str) -> None:
        response.set_cookie(SESSION_COOKIE, secret, httponly=True, samesite="strict",
                            secure=secure(request), path="/",
                            max_age=int(config.session_hours * 3600))

    # ------------------------------------------------------------ login
    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/", error: str = ""):
        token = secrets.token_urlsafe(24)
        resp = render(request, "login.html", None, login_csrf=token, next=_safe_next(next),
                    error=error)
        resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=secure(request), path="/login", max_age=3600)
        return resp

    @app.post("/login")
    def login(request: Request, data: dict = Depends(body)):
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        sent = data.get("csrf", "")
        if not cookie or not isinstance(sent, str) or not hmac.compare_digest(sent, cookie):
            raise HTTPException(403, "missing or wrong CSRF token: reload the login page")
        client = request.client.host if request.client else "?"
        if limiter.blocked(client):
            raise HTTPException(429, "too many failed logins from your address: "
                                     "wait a few minutes")
        name, password = str(data.get("username", "")), str(data.get("password", ""))
        nxt = _safe_next(str(data.get("next", "/")))
        try:
            identity = auth.login(store, name, password)
        except auth.AuthError as exc:
            limiter.fail(client)
            return RedirectResponse(f"/login?next={quote(nxt)}&error={quote(str(exc))}",
                                    status_code=303)
        secret, _csrf = auth.start_session(store, identity, hours=config.session_hours)
        resp = RedirectResponse("/account" if identity.must_change else nxt, status_code=303)
        set_session_cookie(request, resp, secret)
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        return resp

    @app.post("/logout")
    def logout(request: Request, me: Caller = Depends(writer)):
        auth.end_session(store, request.cookies.get(SESSION_COOKIE, ""))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # ------------------------------------------------------------ account
    @app.get("/account", response_class=HTMLResponse)
    def account(request: Request, me: Caller = Depends(reader)):
        return render(request, "account.html", me, tokens=auth.tokens(store, me.id),
                    new_token=None)

    @app.post("/account/password")
    def change_password(request: Request, data: dict = Depends(body),
                        me: Caller = Depends(writer)):
        new = str(data.get("new", ""))
        if new != str(data.get("again", "")):
            raise HTTPException(400, "the two new passwords differ")
        if new == str(data.get("old", "")):
            raise HTTPException(400, "choose a password different from the current one")
        try:
            auth.set_password(store, me.id, me.id, new, old_password=str(data.get("old", "")))
        except StoreValidationError as exc:
            raise HTTPException(400, str(exc)) from exc
        except auth.AuthError as exc:
            raise HTTPException(403, str(exc)) from exc
        # a new password ends every session: start a fresh one for this browser
        identity = auth.login(store, me.name, new)
        secret, _ = auth.start_session(store, identity, hours=config.session_hours)
        resp = RedirectResponse("/", status_code=303)
        set_session_cookie(request, resp, secret)
        return resp

    @app.post("/account/tokens", response_class=HTMLResponse)
    def new_token(request: Request, data: dict = Depends(body), me: Caller = Depends(writer)):
        from datetime import timedelta

        days = data.get("days") or ""
        try:
            expires = timedelta(days=float(days)) if str(days).strip() else None
        except ValueError as exc:
            raise HTTPException(400, "days must be a number") from exc
        token = checked(auth.create_token, store, me.id, name=str(data.get("name", "")),
                        expires_in=expires)
        return render(request, "account.html", me, tokens=auth.tokens(store, me.id),
                    new_token=token)

    @app.post("/account/tokens/{token_id}/revoke")
    def revoke(token_id: int, me: Caller = Depends(writer)):
        checked(auth.revoke_token, store, me.id, token_id)
        return RedirectResponse("/account", status_code=303)

    # ------------------------------------------------------------ desktop
    def _progress(me: Caller, info) -> dict:
        prog = store.progress(me.id, info.id)
        mine = prog.get(me.name, {"done": 0, "total": info.n_images})
        return {"done": mine["done"], "total": info.n_images}

    @app.get("/", response_class=HTMLResponse)
    def desktop(request: Request, me: Caller = Depends(reader)):
        rows = []
        for info in store.collections(me.id):
            preds = store.predictions(me.id, info.id) if info.task_type == "label" else {}
            classes = sorted({p.label for p in preds.values() if p.label is not None})
            rows.append({"info": info, "progress": _progress(me, info), "classes": classes})
        return render(request, "desktop.html", me, rows=rows)

    # ------------------------------------------------------------ annotation page
    def _page_of(images: list, page: int, per: int) -> tuple[list, int, int]:
        pages = max(1, -(-len(images) // per))
        page = min(max(1, page), pages)
        return images[(page - 1) * per: page * per], page, pages

    @app.get("/c/{cid}", response_class=HTMLResponse)
    def annotate_page(request: Request, cid: int, page: int = 0, per: int = 20,
                      me: Caller = Depends(reader)):
        info = visible(store.collection, me.id, cid)
        per = per if per in PAGE_SIZES else 20
        images = store.images(me.id, cid)
        mine = {r.image_id: r for r in store.annotations(me.id, cid, annotator=me.name)}
        preds = store.predictions(me.id, cid)
        if page <= 0:  # the first page with something left to do
            todo = next((k for k, im in enumerate(images) if im.id not in mine), 0)
            page = todo // per + 1
        shown, page, pages = _page_of(images, page, per)
        items = []
        for im in shown:
            rec, pred = mine.get(im.id), preds.get(im.id)
            items.append({"id": im.id, "position": im.position, "done": rec is not None,
                          "label": rec.label if rec else None,
                          "value": rec.value if rec else None,
                          "predicted": pred.label if pred else None,
                          "name": im.meta.get("name") or f"image {im.position + 1}"})
        data = {"collection": info.id, "task_type": info.task_type, "labels": info.labels,
                "tools": info.tools, "items": items, "save_url": f"/api/c/{info.id}/annotations",
                "image_url": f"/img/{info.id}/"}
        return render(request, "annotate.html", me, info=info, data=data, page=page,
                         pages=pages, per=per, per_choices=PAGE_SIZES,
                         done=len(mine), total=len(images))

    # ------------------------------------------------------------ grid review
    @app.get("/c/{cid}/review", response_class=HTMLResponse)
    def review_page(request: Request, cid: int, label: str = "", per: int = 24,
                    me: Caller = Depends(reader)):
        info = visible(store.collection, me.id, cid)
        if info.task_type != "label":
            raise HTTPException(400, "grid review is for image-label collections")
        preds = store.predictions(me.id, cid)
        mine = {r.image_id for r in store.annotations(me.id, cid, annotator=me.name)}
        counts: dict[str, int] = defaultdict(int)
        for p in preds.values():
            if p.label is not None and p.image_id not in mine:
                counts[p.label] += 1
        if label and label not in info.labels:
            raise HTTPException(404, "no such label in this collection")
        per = per if per in (12, 24, 48, 96) else 24
        queue = []
        if label:
            order = {im.id: im.position for im in store.images(me.id, cid)}
            queue = sorted((p for p in preds.values() if p.label == label
                            and p.image_id not in mine),
                           key=lambda p: (p.confidence if p.confidence is not None else 1.0,
                                          order.get(p.image_id, 0)))[:per]
        return render(request, "review.html", me, info=info, label=label,
                    counts=dict(sorted(counts.items())), queue=queue, per=per,
                    others=[x for x in info.labels if x != label])

    @app.post("/c/{cid}/review")
    def review_save(cid: int, data: dict = Depends(body), me: Caller = Depends(writer)):
        info = visible(store.collection, me.id, cid)
        label = str(data.get("label", ""))
        ids = data.get("ids") or []
        ids = [ids] if isinstance(ids, str) else list(ids)
        try:
            ids = [int(x) for x in ids]
        except ValueError as exc:
            raise HTTPException(400, "bad image ids") from exc
        preds = store.predictions(me.id, cid)
        try:
            elapsed = max(0.0, float(data.get("elapsed") or 0.0))
        except ValueError:
            elapsed = 0.0
        items = []
        for iid in ids:
            pred = preds.get(iid)
            if pred is None or pred.label != label:
                raise HTTPException(404, f"image {iid} is not in this review page")
            chosen = str(data.get(f"new_{iid}") or label)
            items.append({"image": iid, "label": chosen,
                          "source": review_source(pred.label, chosen),
                          "time_spent": elapsed / len(ids)})
        if items:
            checked(save_many, me, cid, items)
        return RedirectResponse(f"/c/{info.id}/review?label={quote(label)}", status_code=303)

    # ------------------------------------------------------------ images
    @app.get("/img/{cid}/{iid}")
    def image(cid: int, iid: int, z: int | None = None, lo: float | None = None,
              hi: float | None = None, size: int | None = None, fmt: str = "png",
              me: Caller = Depends(reader)):
        rec = visible(store.image, me.id, cid, iid)
        if size is not None and not 16 <= size <= 4096:
            raise HTTPException(400, "size must be within 16..4096")
        try:
            out = renderer.render(rec.uri, z=z, lo=lo, hi=hi, size=size, fmt=fmt)
        except ImageRefused as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        return Response(out.body, media_type=out.media_type, headers={
            "X-Image-Shape": f"{out.shape[0]},{out.shape[1]}",
            "X-Image-Slices": str(out.n_slices), "X-Image-Slice": str(out.z),
            "X-Contrast-Limits": f"{out.limits[0]:.6g},{out.limits[1]:.6g}",
            "Cache-Control": "private, max-age=300"})

    # ------------------------------------------------------------ JSON API
    @app.get("/api/me")
    def api_me(me: Caller = Depends(reader)):
        return {"name": me.name, "role": me.identity.role,
                "must_change_password": me.identity.must_change}

    @app.get("/api/collections")
    def api_collections(me: Caller = Depends(reader)):
        return [{"id": c.id, "name": c.name, "template": c.template, "task_type": c.task_type,
                 "labels": c.labels, "n_images": c.n_images, **_progress(me, c)}
                for c in store.collections(me.id)]

    @app.get("/api/c/{cid}/images")
    def api_images(cid: int, me: Caller = Depends(reader)):
        return [{"id": im.id, "position": im.position, "meta": im.meta, "tags": im.tags}
                for im in visible(store.images, me.id, cid)]

    @app.get("/api/c/{cid}/annotations")
    def api_annotations(request: Request, cid: int, annotator: str | None = None,
                        me: Caller = Depends(reader)):
        """The caller's annotations of the collection (everyone's for an admin), with
        an ETag: a request with ``If-None-Match`` gets 304 while nothing changed
        (one aggregate query; how live views poll)."""
        if annotator is None and not me.is_admin:
            annotator = me.name
        if annotator != me.name and not me.is_admin:
            raise HTTPException(404, "not found (or not assigned to you)")
        state = visible(store.annotation_state, me.id, cid, annotator=annotator)
        etag = '"' + hashlib.sha256(repr((cid, annotator, state)).encode()).hexdigest()[:32] + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        recs = visible(store.annotations, me.id, cid, annotator=annotator)
        return JSONResponse([_record_json(r) for r in recs], headers={"ETag": etag})

    def save_one(me: Caller, cid: int, data: dict) -> dict:
        try:
            iid = int(data["image_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HTTPException(400, "image_id (an integer) is required") from exc
        label = data.get("label")
        label = None if label is None else str(label)
        value = data.get("value") or {}
        if not isinstance(value, dict):
            raise HTTPException(400, "value must be a JSON object")
        ts = data.get("time_spent")
        if ts is not None and (not isinstance(ts, int | float) or isinstance(ts, bool)):
            raise HTTPException(400, "time_spent must be a number of seconds")
        ts = None if ts is None else max(0.0, float(ts))
        # one transaction: access check, prediction (keeping the model's label is
        # "accepted-model"), upsert and audit row
        kw = dict(label=label, value=value, time_spent=ts)
        try:  # refused like a read: an unassigned collection is 404, not 403
            if write_lock is None:
                source = visible(store.save_review, me.id, cid, iid, **kw)
            else:
                with write_lock:
                    source = visible(store.save_review, me.id, cid, iid, **kw)
        except StoreValidationError as exc:
            raise HTTPException(400, str(exc)) from exc
        return {"image_id": iid, "annotator": me.name, "label": label, "source": source,
                "time_spent": ts}

    @app.post("/api/c/{cid}/annotations")
    async def api_save(request: Request, cid: int):
        """Save the caller's annotation of one image: ``image_id`` and ``label``
        and/or ``value``, optional ``time_spent`` (seconds).

        The hot path of the service: the body is read on the event loop, then the
        login check (token or session + CSRF) and the save run in ONE worker-thread
        hop (sync dependencies would take one hop each)."""
        data = await body(request)

        def work() -> dict:
            me = writer(request, data, reader(request, caller(request)))
            return save_one(me, cid, data)

        return await run_in_threadpool(work)

    # ------------------------------------------------------------ admin
    def admin_page(request: Request, me: Caller, **extra):
        colls = store.collections(me.id)
        reports = {c.id: store.report(me.id, c.id) for c in colls}
        return render(request, "admin.html", me, users=store.users(),
                    templates=store.templates(), collections=colls, reports=reports,
                    texts={k: format_report(v) for k, v in reports.items()},
                    roots=[str(r) for r in renderer.roots], **extra)

    @app.get("/admin", response_class=HTMLResponse)
    def admin_home(request: Request, me: Caller = Depends(reader)):
        admin(me)
        return admin_page(request, me)

    @app.post("/admin/users")
    def admin_add_user(data: dict = Depends(body), me: Caller = Depends(writer)):
        admin(me)
        name = str(data.get("name", "")).strip()
        tags = [t.strip() for t in str(data.get("expertise", "")).split(",") if t.strip()]
        password = str(data.get("password", ""))
        if len(password) < auth.MIN_PASSWORD:  # check before creating the account
            raise HTTPException(400, f"an initial password needs at least "
                                     f"{auth.MIN_PASSWORD} characters")
        checked(store.add_user, me.id, name, str(data.get("role", "annotator")), tags)
        checked(auth.set_password, store, me.id, name, password)
        return RedirectResponse("/admin#users", status_code=303)

    @app.post("/admin/users/{uid}/password")
    def admin_reset_password(uid: int, data: dict = Depends(body),
                             me: Caller = Depends(writer)):
        admin(me)
        checked(auth.set_password, store, me.id, uid, str(data.get("password", "")))
        return RedirectResponse("/admin#users", status_code=303)

    @app.post("/admin/templates")
    def admin_add_template(data: dict = Depends(body), me: Caller = Depends(writer)):
        admin(me)
        labels = [t.strip() for t in str(data.get("labels", "")).split(",") if t.strip()]
        checked(store.add_template, me.id, str(data.get("name", "")).strip(),
                str(data.get("task_type", "")), labels=labels,
                description=str(data.get("description", "")))
        return RedirectResponse("/admin#templates", status_code=303)

    @app.post("/admin/collections")
    def admin_add_collection(data: dict = Depends(body), me: Caller = Depends(writer)):
        admin(me)
        patterns = [x for x in str(data.get("images", "")).splitlines() if x.strip()]
        uris = checked(expand_images, patterns)
        for uri in uris:  # index only what this server may show
            try:
                resolve_inside(uri, renderer.roots)
            except ImageRefused as exc:
                raise HTTPException(400, f"{Path(uri).name}: {exc}") from exc
        name = str(data.get("name", "")).strip()
        have = {c.name for c in store.collections(me.id)}
        if name not in have:
            checked(store.add_collection, me.id, name, str(data.get("template", "")),
                    description=str(data.get("description", "")))
        if uris:
            checked(store.add_images, me.id, name, uris)
        return RedirectResponse("/admin#collections", status_code=303)

    @app.post("/admin/assign")
    def admin_assign(data: dict = Depends(body), me: Caller = Depends(writer)):
        admin(me)
        fn = store.unassign if data.get("action") == "unassign" else store.assign
        checked(fn, me.id, int(data.get("collection") or 0), str(data.get("user", "")))
        return RedirectResponse("/admin#collections", status_code=303)

    return app


def _safe_next(target: str) -> str:
    """Only same-site relative paths as a post-login destination (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _record_json(r) -> dict:
    return {"id": r.id, "image_id": r.image_id, "annotator": r.annotator, "label": r.label,
            "value": {k: v for k, v in r.value.items() if k != "mask"}, "source": r.source,
            "time_spent": r.time_spent, "updated_at": r.updated_at.isoformat(),
            "updated_by": r.updated_by}


def exposure_warning(host: str) -> str | None:
    """What to tell the admin when ``host`` serves plain HTTP beyond this machine."""
    import ipaddress

    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (f"warning: listening on {host} serves plain HTTP to the network: passwords, "
            "session cookies and images cross it in clear. Unless TLS terminates at a "
            "proxy on a trusted network in front of it, serve on 127.0.0.1 behind an "
            "HTTPS reverse proxy on this host (--secure-cookies --proxy, docs/web.md).")


def serve(location: str, *, host: str = "127.0.0.1", port: int = 8000,
          config: WebConfig | None = None, files_dir: str | None = None,
          proxy: bool = False, log_level: str = "info") -> None:
    """Open the store at ``location`` and serve it with uvicorn until interrupted."""
    import uvicorn

    kw = {"files_dir": files_dir} if files_dir else {}
    with Store.open(location, **kw) as store:
        app = create_app(store, config)
        app.state.renderer.warm_up()
        roots = app.state.renderer.roots
        print(f"expertloop serve: {store.url_safe} on http://{host}:{port}/ "
              f"(images from: {', '.join(map(str, roots)) or 'nowhere'})", flush=True)
        warning = exposure_warning(host)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level,
                    proxy_headers=proxy, forwarded_allow_ips="127.0.0.1" if proxy else None)


__all__ = ["WebConfig", "create_app", "serve", "StoreError"]
