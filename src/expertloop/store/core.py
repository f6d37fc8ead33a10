"""The store service layer: every read and write of a project goes through here.

Permissions are enforced here (not in the widgets): admins create users,
templates, collections and assignments; annotators read and write only the
collections assigned to them, and only their own annotations. Every write
records its author (``created_by`` / ``updated_by`` columns and one row in the
``audit`` table). All SQL is built with SQLAlchemy expressions and bound
parameters; nothing is formatted into SQL strings.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from expertloop.store.models import (
    ROLES,
    SCHEMA_VERSION,
    SOURCES,
    TASK_TYPES,
    Annotation,
    Assignment,
    Audit,
    Collection,
    CollectionImage,
    Image,
    ImageAttr,
    Prediction,
    StoreInfo,
    Template,
    User,
    utcnow,
)

log = logging.getLogger(__name__)

#: the database file inside a project folder
DB_NAME = "expertloop-project.db"
SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_TOOLS = {
    "label": ["label-dropdown", "keys"],
    "points": ["points"],
    "contour": ["shapes"],
    "mask": ["labels"],
}


# ------------------------------------------------------------------ errors
class StoreError(Exception):
    """A project store problem, with a message meant for the user."""


class PermissionDenied(StoreError):
    """The acting user may not do this."""


class StoreValidationError(StoreError, ValueError):
    """Bad input: a label outside the label set, an unknown task type, ..."""


class NotFound(StoreError, LookupError):
    """No such user, collection, template or image."""


class StoreLockedError(StoreError):
    """Another writer held the database lock for longer than ``lock_timeout``."""


# ------------------------------------------------------------------ records
@dataclass(frozen=True)
class ImageRecord:
    id: int
    uri: str
    meta: dict
    tags: list
    position: int = 0


@dataclass(frozen=True)
class AnnotationRecord:
    id: int
    collection: str
    image_id: int
    uri: str
    annotator: str
    label: str | None
    value: dict
    mask_ref: str | None
    source: str
    time_spent: float | None
    created_at: datetime
    updated_at: datetime
    created_by: str
    updated_by: str


@dataclass(frozen=True)
class PredictionRecord:
    image_id: int
    uri: str
    label: str | None
    confidence: float | None
    probabilities: dict | None
    meta: dict
    model: str


@dataclass
class CollectionInfo:
    id: int
    name: str
    description: str
    template: str
    task_type: str
    labels: list
    tools: list
    n_images: int
    annotators: list = field(default_factory=list)


# ------------------------------------------------------------------ helpers
def resolve_location(location: str | os.PathLike) -> tuple[str, Path | None]:
    """(SQLAlchemy URL, project folder) for a path, project folder or URL."""
    text = str(location)
    if "://" in text:
        if text.startswith("sqlite:///"):
            db = Path(text[len("sqlite:///"):])
            return text, db.parent
        return text, None
    path = Path(text).expanduser()
    if path.is_dir() or not path.suffix:
        path = path / DB_NAME
    return f"sqlite:///{path}", path.parent


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///"):])
    return None


def _check_sqlite_file(path: Path) -> None:
    """Refuse (without touching it) a file that is not a SQLite database."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(16)
    if head != SQLITE_MAGIC:
        raise StoreError(
            f"{path} is not a SQLite database (corrupt or another kind of file); "
            "it was left untouched. Restore it from a backup or choose another file.")


def _is_lock_error(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    if "database is locked" in text or "database table is locked" in text \
            or "busy" in text:
        return True
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return code in ("40001", "40P01", "55P03")  # serialization, deadlock, lock n/a


def _db_error_hint(orig: BaseException) -> str:
    """Why a database call failed, in plain words (a read-only or full disk is
    not a corrupt file)."""
    text = str(orig).lower()
    for needle, hint in (
            ("readonly", "the project file or its folder is read-only"),
            ("read-only", "the project file or its folder is read-only"),
            ("full", "the disk is full"),
            ("unable to open", "the file or its folder cannot be opened (missing or no permission)"),
            ("disk i/o", "a disk read/write error (a full, removed or read-only disk?)"),
            ("malformed", "the file is damaged"),
            ("not a database", "the file is damaged or not an expertloop project")):
        if needle in text:
            return f" ({hint})"
    return ""


def _check_points(points: Any) -> None:
    """Shape points: a list of coordinate pairs (or triples), finite numbers only."""
    try:
        rows = [[float(c) for c in p] for p in points]
    except (TypeError, ValueError):
        raise StoreValidationError("shape points must be lists of numbers") from None
    if len({len(r) for r in rows}) != 1 or len(rows[0]) not in (2, 3) \
            or not all(math.isfinite(c) for r in rows for c in r):
        raise StoreValidationError(
            "shape points must be finite (row, column) pairs; got NaN, inf or ragged points")


def _seconds(value: Any) -> float | None:
    """A ``time_spent``: None, or a finite number of seconds >= 0."""
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise StoreValidationError(f"time_spent {value!r} is not a number of seconds") from None
    if not math.isfinite(t) or t < 0:
        raise StoreValidationError(f"time_spent must be a finite number of seconds >= 0, not {t!r}")
    return t


# a user name: letters or digits first, then letters, digits, spaces and . _ @ + -
_USER_NAME = re.compile(r"[^\W_][\w .@+-]{0,63}")


def _check_user_name(name: str) -> str:
    name = str(name).strip()
    if not name:
        raise StoreValidationError("a user needs a name")
    if not _USER_NAME.fullmatch(name) or ".." in name:
        raise StoreValidationError(
            f"{name[:70]!r} is not a valid user name: up to 64 letters, digits, spaces and "
            ". _ @ + -, starting with a letter or digit (no / \\ or ..)")
    return name


def _refuse_mask_ref(items: Iterable[Mapping[str, Any]]) -> None:
    if any(it.get("mask_ref") is not None for it in items):
        raise StoreValidationError("mask_ref is set by the store only; save a mask "
                                   "with save_mask")


def _pairs(result) -> dict:
    """A dict from a result of (key, value) rows."""
    return {k: v for k, v in result}


def _lookup(s: Session, model, which: Any, kind: str):
    """A user / collection / template by object, id or name; NotFound otherwise."""
    if not isinstance(which, int | str):
        which = which.id
    row = s.scalar(select(model).where(
        model.id == which if isinstance(which, int) else model.name == which))
    if row is None:
        raise NotFound(f"no {kind} {which!r} in this project")
    return row


def _image_spec(item: Any) -> tuple[str, dict, list]:
    """(uri, meta, tags) from a URI string/path or a mapping with 'uri'."""
    if isinstance(item, Mapping):
        if "uri" not in item:
            raise StoreValidationError(f"image entry without 'uri': {item!r}")
        meta = dict(item.get("meta") or {})
        tags = list(item.get("tags") or [])
        return str(item["uri"]), meta, tags
    return str(item), {}, []


def review_source(predicted: str | None, label: str) -> str:
    """``"accepted-model"`` when the expert kept the predicted label, else ``"manual"``."""
    return "accepted-model" if predicted is not None and str(predicted) == str(label) \
        else "manual"


def _sqlite_setup(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_con, _record):  # pragma: no cover - driver level
        dbapi_con.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_con.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # writers take the write lock at BEGIN, so two writers queue on the
        # busy timeout instead of failing on a read->write upgrade
        if conn.get_execution_options().get("expertloop_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


# ------------------------------------------------------------------ store
class Store:
    """An annotation project: SQLite file in a project folder, or any SQLAlchemy URL.

    Use :meth:`create` for a new project and :meth:`open` for an existing one.
    ``lock_timeout`` is how long a write waits (retrying, with a logged
    message and ``on_wait(message)``) for another writer's lock.
    """

    def __init__(self, location: str | os.PathLike, *, lock_timeout: float = 60.0,
                 busy_timeout: float = 2.0, files_dir: str | os.PathLike | None = None,
                 on_wait: Callable[[str], None] | None = None,
                 _must_exist: bool = True) -> None:
        self.url, project_dir = resolve_location(location)
        self.lock_timeout = float(lock_timeout)
        self.on_wait = on_wait
        if files_dir is None and project_dir is None:
            files_dir = os.environ.get("EXPERTLOOP_STORE_FILES") or None
        self.files_dir = Path(files_dir) if files_dir is not None else project_dir
        self.project_dir = project_dir
        db = _sqlite_path(self.url)
        if db is not None:
            _check_sqlite_file(db)
            if _must_exist and not db.exists():
                raise StoreError(f"no project at {db} (create one with Store.create)")
            self.engine = create_engine(
                self.url, connect_args={"timeout": busy_timeout})
            _sqlite_setup(self.engine, busy_timeout)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        self.dialect = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(expertloop_write=True)
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)
        self._upsert_stmt = None

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, location: str | os.PathLike, admin: str = "admin", *,
               expertise: Sequence[str] = (), **kwargs: Any) -> Store:
        """Create (or complete) a project and its first admin user."""
        admin = _check_user_name(admin)
        url, project_dir = resolve_location(location)
        db = _sqlite_path(url)
        if db is not None:
            _check_sqlite_file(db)
            db.parent.mkdir(parents=True, exist_ok=True)
        store = cls(location, _must_exist=False, **kwargs)
        try:
            store._check_foreign_database()
            if db is not None:  # persistent in the file: readers never block writers
                raw = store.engine.raw_connection()
                try:
                    raw.driver_connection.execute("PRAGMA journal_mode=WAL")
                finally:
                    raw.close()
            migrate(store.engine)
            with store._writer() as s, s.begin():
                if s.scalar(select(func.count()).select_from(User)) == 0:
                    user = User(name=admin, role="admin", expertise=list(expertise))
                    s.add(user)
                    s.flush()
                    s.add(Audit(actor_id=user.id, action="create", entity="user",
                                entity_id=user.id, detail={"name": admin, "bootstrap": True}))
                if s.get(StoreInfo, "created") is None:
                    s.add(StoreInfo(key="created", value=utcnow().isoformat()))
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, location: str | os.PathLike, *, upgrade: bool = False,
             **kwargs: Any) -> Store:
        """Open an existing project; refuse a newer schema, upgrade an older one if asked."""
        store = cls(location, **kwargs)
        try:
            version = store.schema_version()
            if version is None:
                raise StoreError(f"{store.url_safe} is not an expertloop project "
                                 "(no schema version); it was left untouched")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"project schema version {version} is newer than this expertloop "
                    f"understands ({SCHEMA_VERSION}); update napari-expertloop")
            if version < SCHEMA_VERSION:
                if not upgrade:
                    raise StoreError(
                        f"project schema version {version} is older than "
                        f"{SCHEMA_VERSION}: run `expertloop store upgrade` (back it up first)")
                migrate(store.engine)
                if store.schema_version() != SCHEMA_VERSION:
                    raise StoreError(f"upgrading {store.url_safe} to schema version "
                                     f"{SCHEMA_VERSION} failed; it was left as it was")
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url_safe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Store({self.url_safe!r})"

    def _check_foreign_database(self) -> None:
        try:
            names = set(inspect(self.engine).get_table_names())
        except DBAPIError as exc:
            raise StoreError(f"cannot read {self.url_safe}: {exc.orig}; "
                             "it was left untouched") from exc
        if names and "store_info" not in names:
            raise StoreError(f"{self.url_safe} already holds other tables "
                             f"({', '.join(sorted(names)[:5])}...); not an expertloop "
                             "project, left untouched")

    def schema_version(self) -> int | None:
        try:
            with self._read() as s:
                if "store_info" not in inspect(s.connection()).get_table_names():
                    return None
                row = s.get(StoreInfo, "schema_version")
        except DBAPIError as exc:
            raise StoreError(f"cannot read {self.url_safe}: {exc.orig}{_db_error_hint(exc.orig)}; "
                             "it was left untouched") from exc
        return int(row.value) if row is not None else None

    # ------------------------------------------------------------ plumbing
    def _run_write(self, fn: Callable[[Session], Any], what: str) -> Any:
        deadline = time.monotonic() + self.lock_timeout
        attempt = 0
        while True:
            try:
                with self._writer() as s, s.begin():
                    return fn(s)
            except (OperationalError, DBAPIError) as exc:
                if not _is_lock_error(exc):
                    if isinstance(exc, OperationalError):  # disk, permissions, connection
                        raise StoreError(f"cannot {what} in {self.url_safe}: {exc.orig}"
                                         f"{_db_error_hint(exc.orig)}; nothing was written") from exc
                    raise
                attempt += 1
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"{what}: another writer kept the project locked for more than "
                        f"{self.lock_timeout:.0f} s; try again later") from exc
                msg = (f"{what}: the project is locked by another writer; "
                       f"waiting and retrying (attempt {attempt})")
                log.warning(msg)
                if self.on_wait is not None:
                    self.on_wait(msg)
                time.sleep(min(0.02 * 2 ** min(attempt, 6), 0.5) * (0.5 + random.random()))

    @staticmethod
    def _audit(s: Session, actor: User, action: str, entity: str,
               entity_id: int | None, **detail: Any) -> None:
        # Core, not an ORM object: no unit-of-work flush on every save
        s.execute(insert(Audit.__table__), dict(
            at=utcnow(), actor_id=actor.id, action=action, entity=entity,
            entity_id=entity_id, detail=detail))

    @staticmethod
    def _user(s: Session, who: User | str | int) -> User:
        return _lookup(s, User, who, "user")

    def _actor(self, s: Session, actor: User | str | int) -> User:
        try:
            return self._user(s, actor)
        except NotFound as exc:
            raise PermissionDenied(f"unknown user {actor!r}: not a member of this project") from exc

    @staticmethod
    def _require_admin(user: User, what: str) -> None:
        if user.role != "admin":
            raise PermissionDenied(f"{user.name} is not an admin: only admins can {what}")

    @staticmethod
    def _collection(s: Session, which: Collection | CollectionInfo | str | int) -> Collection:
        return _lookup(s, Collection, which, "collection")

    @staticmethod
    def _template(s: Session, which: Template | str | int) -> Template:
        return _lookup(s, Template, which, "template")

    @staticmethod
    def _is_assigned(s: Session, user: User, coll: Collection) -> bool:
        return s.scalar(select(exists().where(
            Assignment.collection_id == coll.id, Assignment.user_id == user.id)))

    def _require_access(self, s: Session, user: User, coll: Collection, what: str) -> None:
        if user.role != "admin" and not self._is_assigned(s, user, coll):
            raise PermissionDenied(
                f"{user.name} is not assigned to collection {coll.name!r}: cannot {what}")

    def _writable_collection(self, s: Session, me: User, which: Any,
                             what: str) -> tuple[Collection, Template]:
        """(collection, its template), checking ``me``'s access: ONE query (the
        hot path of every save; same refusals as ``_collection`` + ``_require_access``)."""
        if not isinstance(which, int | str):
            which = which.id
        row = s.execute(select(Collection, Template, Assignment.user_id).join(
            Template, Template.id == Collection.template_id).outerjoin(
            Assignment, and_(Assignment.collection_id == Collection.id,
                             Assignment.user_id == me.id)).where(
            Collection.id == which if isinstance(which, int)
            else Collection.name == which)).first()
        if row is None:
            raise NotFound(f"no collection {which!r} in this project")
        coll, tpl, assigned = row
        if me.role != "admin" and assigned is None:
            raise PermissionDenied(
                f"{me.name} is not assigned to collection {coll.name!r}: cannot {what}")
        return coll, tpl

    @staticmethod
    def _image(s: Session, coll: Collection, image: int | str) -> Image:
        cond = Image.id == image if isinstance(image, int) else Image.uri == str(image)
        img = s.scalar(select(Image).join(
            CollectionImage, CollectionImage.image_id == Image.id).where(
            CollectionImage.collection_id == coll.id, cond))
        if img is None:
            raise NotFound(f"image {image!r} is not in collection {coll.name!r}")
        return img

    # ------------------------------------------------------------ users
    def add_user(self, actor: User | str, name: str, role: str = "annotator",
                 expertise: Sequence[str] = ()) -> User:
        """Register a user (admins only)."""
        if role not in ROLES:
            raise StoreValidationError(f"role must be one of {ROLES}, not {role!r}")
        name = _check_user_name(name)

        def write(s: Session) -> User:
            me = self._actor(s, actor)
            self._require_admin(me, "add users")
            if s.scalar(select(User).where(User.name == name)) is not None:
                raise StoreValidationError(f"there is already a user called {name!r}")
            user = User(name=name, role=role, expertise=list(expertise), created_by=me.id)
            s.add(user)
            s.flush()
            self._audit(s, me, "create", "user", user.id, name=name, role=role)
            return user

        return self._run_write(write, f"add user {name}")

    def users(self, expertise: str | None = None) -> list[User]:
        """All users, or those whose expertise tags include ``expertise``
        (to match annotators to a collection, as the paper's platform does)."""
        with self._read() as s:
            users = list(s.scalars(select(User).order_by(User.name)))
        if expertise is not None:
            users = [u for u in users if expertise in (u.expertise or [])]
        return users

    def user(self, name: str | int) -> User:
        with self._read() as s:
            return self._user(s, name)

    # ------------------------------------------------------------ templates
    def add_template(self, actor: User | str, name: str, task_type: str,
                     labels: Sequence[str] = (), tools: Sequence[str] | None = None,
                     description: str = "") -> Template:
        """A task template: ``label`` / ``points`` / ``contour`` / ``mask`` (admins only)."""
        if task_type not in TASK_TYPES:
            raise StoreValidationError(
                f"task type must be one of {TASK_TYPES}, not {task_type!r}")
        labels = [str(x) for x in labels]
        if len(set(labels)) != len(labels):
            raise StoreValidationError(f"duplicate labels in {labels}")
        if task_type == "label" and len(labels) < 2:
            raise StoreValidationError("an image-label template needs at least two labels")
        tools = list(tools) if tools is not None else list(DEFAULT_TOOLS[task_type])

        def write(s: Session) -> Template:
            me = self._actor(s, actor)
            self._require_admin(me, "create templates")
            if s.scalar(select(Template).where(Template.name == name)) is not None:
                raise StoreValidationError(f"there is already a template called {name!r}")
            tpl = Template(name=name, task_type=task_type, labels=labels, tools=tools,
                           description=description, created_by=me.id)
            s.add(tpl)
            s.flush()
            self._audit(s, me, "create", "template", tpl.id, name=name)
            return tpl

        return self._run_write(write, f"add template {name}")

    def templates(self) -> list[Template]:
        with self._read() as s:
            return list(s.scalars(select(Template).order_by(Template.name)))

    # ------------------------------------------------------------ collections
    def add_collection(self, actor: User | str, name: str, template: str | int,
                       description: str = "", images: Iterable[Any] = ()) -> CollectionInfo:
        """Create a collection with a task template (admins only)."""
        name = str(name).strip()
        if not name:
            raise StoreValidationError("a collection needs a name")

        def write(s: Session) -> int:
            me = self._actor(s, actor)
            self._require_admin(me, "create collections")
            if s.scalar(select(Collection).where(Collection.name == name)) is not None:
                raise StoreValidationError(f"there is already a collection called {name!r}")
            tpl = self._template(s, template)
            coll = Collection(name=name, description=description, template_id=tpl.id,
                              created_by=me.id)
            s.add(coll)
            s.flush()
            self._audit(s, me, "create", "collection", coll.id, name=name)
            return coll.id

        cid = self._run_write(write, f"add collection {name}")
        images = list(images)
        if images:
            self.add_images(actor, cid, images)
        return self.collection(actor, cid)

    def add_images(self, actor: User | str, collection: str | int,
                   images: Iterable[Any]) -> list[int]:
        """Index images (URIs or paths, with optional meta and tags) in a collection.

        ``images``: strings, or mappings ``{"uri": ..., "meta": {...}, "tags": [...]}``.
        The pixels are never copied. Admins only. Returns the image ids.
        """
        specs = [_image_spec(x) for x in images]

        def write(s: Session) -> list[int]:
            me = self._actor(s, actor)
            self._require_admin(me, "add images to collections")
            coll = self._collection(s, collection)
            return self._add_images(s, me, coll, specs)

        return self._run_write(write, "add images")

    def _add_images(self, s: Session, me: User, coll: Collection,
                    specs: list[tuple[str, dict, list]]) -> list[int]:
        if not specs:
            return []
        uris = list(dict.fromkeys(u for u, _, _ in specs))
        ids_by_uri: dict[str, int] = {}
        merged: dict[str, dict] = {}
        for uri, meta, _tags in specs:
            if meta:
                merged.setdefault(uri, {}).update(meta)
        for chunk in range(0, len(uris), 500):
            for img in s.scalars(select(Image).where(Image.uri.in_(uris[chunk:chunk + 500]))):
                ids_by_uri[img.uri] = img.id
                if img.uri in merged:
                    img.meta = {**(img.meta or {}), **merged[img.uri]}
        now = utcnow()
        new_rows = [dict(uri=u, meta=merged.get(u, {}), created_by=me.id, created_at=now)
                    for u in uris if u not in ids_by_uri]
        for start in range(0, len(new_rows), 1000):  # Core bulk INSERT ... RETURNING
            res = s.execute(insert(Image).returning(Image.id, Image.uri,
                                                    sort_by_parameter_order=True),
                            new_rows[start:start + 1000])
            ids_by_uri.update({uri: iid for iid, uri in res})
        wanted: dict[int, set] = defaultdict(set)
        for uri, meta, tags in specs:
            iid = ids_by_uri[uri]
            wanted[iid] |= {(k, str(v)) for k, v in meta.items()}
            wanted[iid] |= {("tag", str(t)) for t in tags}
        have: set[tuple] = set()
        with_attrs = sorted(i for i, a in wanted.items() if a)
        for start in range(0, len(with_attrs), 500):
            have.update(tuple(r) for r in s.execute(
                select(ImageAttr.image_id, ImageAttr.key, ImageAttr.value).where(
                    ImageAttr.image_id.in_(with_attrs[start:start + 500]))))
        attr_rows = [dict(image_id=iid, key=k, value=v) for iid in with_attrs
                     for k, v in sorted(wanted[iid]) if (iid, k, v) not in have]
        pos = s.scalar(select(func.max(CollectionImage.position)).where(
            CollectionImage.collection_id == coll.id))
        pos = -1 if pos is None else pos
        in_coll = set(s.scalars(select(CollectionImage.image_id).where(
            CollectionImage.collection_id == coll.id)))
        ids, ci_rows = [], []
        for uri, _meta, _tags in specs:
            iid = ids_by_uri[uri]
            if iid not in in_coll:
                pos += 1
                ci_rows.append(dict(collection_id=coll.id, image_id=iid, position=pos,
                                    added_by=me.id, added_at=now))
                in_coll.add(iid)
            ids.append(iid)
        for table, rows in ((ImageAttr, attr_rows), (CollectionImage, ci_rows)):
            for start in range(0, len(rows), 1000):
                s.execute(insert(table), rows[start:start + 1000])
        self._audit(s, me, "add-images", "collection", coll.id, n=len(specs))
        return ids

    def collection(self, actor: User | str, which: str | int) -> CollectionInfo:
        with self._read() as s:
            me = self._actor(s, actor)
            coll = self._collection(s, which)
            self._require_access(s, me, coll, "read it")
            return self._info(s, coll)

    def _info(self, s: Session, coll: Collection) -> CollectionInfo:
        tpl = s.get(Template, coll.template_id)
        n = s.scalar(select(func.count()).select_from(CollectionImage).where(
            CollectionImage.collection_id == coll.id))
        names = list(s.scalars(select(User.name).join(
            Assignment, Assignment.user_id == User.id).where(
            Assignment.collection_id == coll.id).order_by(User.name)))
        return CollectionInfo(coll.id, coll.name, coll.description, tpl.name,
                              tpl.task_type, list(tpl.labels), list(tpl.tools), n, names)

    def collections(self, actor: User | str) -> list[CollectionInfo]:
        """Collections the actor may see: all for admins, the assigned ones otherwise."""
        with self._read() as s:
            me = self._actor(s, actor)
            stmt = select(Collection).order_by(Collection.name)
            if me.role != "admin":
                stmt = stmt.join(Assignment, Assignment.collection_id == Collection.id).where(
                    Assignment.user_id == me.id)
            return [self._info(s, c) for c in s.scalars(stmt)]

    def assign(self, actor: User | str, collection: str | int, user: str | int) -> None:
        """Assign an annotator to a collection (admins only)."""

        def write(s: Session) -> None:
            me = self._actor(s, actor)
            self._require_admin(me, "assign annotators")
            coll = self._collection(s, collection)
            who = self._user(s, user)
            if not self._is_assigned(s, who, coll):
                s.add(Assignment(collection_id=coll.id, user_id=who.id, created_by=me.id))
                s.flush()
                self._audit(s, me, "assign", "collection", coll.id, user=who.name)

        self._run_write(write, "assign")

    def unassign(self, actor: User | str, collection: str | int, user: str | int) -> None:
        def write(s: Session) -> None:
            me = self._actor(s, actor)
            self._require_admin(me, "unassign annotators")
            coll = self._collection(s, collection)
            who = self._user(s, user)
            s.execute(delete(Assignment).where(Assignment.collection_id == coll.id,
                                               Assignment.user_id == who.id))
            self._audit(s, me, "unassign", "collection", coll.id, user=who.name)

        self._run_write(write, "unassign")

    def images(self, actor: User | str, collection: str | int) -> list[ImageRecord]:
        """The collection's images in order, with their metadata and tags."""
        with self._read() as s:
            me = self._actor(s, actor)
            coll = self._collection(s, collection)
            self._require_access(s, me, coll, "read it")
            rows = s.execute(select(Image, CollectionImage.position).join(
                CollectionImage, CollectionImage.image_id == Image.id).where(
                CollectionImage.collection_id == coll.id).order_by(
                CollectionImage.position)).all()
            tags: dict[int, list] = defaultdict(list)
            for iid, val in s.execute(select(ImageAttr.image_id, ImageAttr.value).join(
                    CollectionImage, CollectionImage.image_id == ImageAttr.image_id).where(
                    CollectionImage.collection_id == coll.id, ImageAttr.key == "tag")):
                tags[iid].append(val)
            return [ImageRecord(img.id, img.uri, dict(img.meta or {}), sorted(tags[img.id]),
                                pos) for img, pos in rows]

    def image(self, actor: User | str, collection: str | int, image: int | str) -> ImageRecord:
        """One image of a collection the actor may read (:class:`NotFound` if not in it)."""
        with self._read() as s:
            coll = self._collection(s, collection)
            self._require_access(s, self._actor(s, actor), coll, "read it")
            cond = Image.id == image if isinstance(image, int) else Image.uri == str(image)
            row = s.execute(select(Image, CollectionImage.position).join(
                CollectionImage, CollectionImage.image_id == Image.id).where(
                CollectionImage.collection_id == coll.id, cond)).first()
            if row is None:
                raise NotFound(f"image {image!r} is not in collection {coll.name!r}")
            img, pos = row
            tags = sorted(s.scalars(select(ImageAttr.value).where(
                ImageAttr.image_id == img.id, ImageAttr.key == "tag")))
            return ImageRecord(img.id, img.uri, dict(img.meta or {}), tags, pos)

    def missing_images(self, actor: User | str, collection: str | int) -> list[ImageRecord]:
        """Images whose local file no longer exists (remote URLs are not checked)."""
        out = []
        for rec in self.images(actor, collection):
            path = local_path(rec.uri)
            if path is not None and not path.exists():
                out.append(rec)
        return out

    # ------------------------------------------------------------ annotations
    def _validate(self, tpl: Template, label: str | None, value: dict) -> tuple[str | None, dict]:
        value = dict(value or {})
        if tpl.task_type == "label":
            label = label if label is not None else value.get("label")
            if label is None:
                raise StoreValidationError("an image-label annotation needs a label")
            label = str(label)
            if label not in tpl.labels:
                raise StoreValidationError(
                    f"label {label!r} is not in template {tpl.name!r}'s label set "
                    f"{tpl.labels}")
            value["label"] = label
            return label, value
        key = {"points": "points", "contour": "shapes", "mask": "mask"}[tpl.task_type]
        if tpl.task_type == "points":
            pts = value.get("points")
            if pts is None:
                raise StoreValidationError("a points annotation needs value['points']")
            value["points"] = [[float(c) for c in p] for p in pts]
        elif tpl.task_type == "contour":
            shapes = value.get("shapes")
            if shapes is None:
                raise StoreValidationError("a contour annotation needs value['shapes']")
            for sh in shapes:
                if sh.get("type") not in ("polygon", "rectangle", "path", "ellipse"):
                    raise StoreValidationError(f"unknown shape type {sh.get('type')!r}")
                if len(sh.get("points", ())) < 2:
                    raise StoreValidationError("a shape needs at least two points")
                _check_points(sh["points"])
        labels_used = []
        if key == "shapes":
            labels_used = [sh.get("label") for sh in value.get("shapes", ())]
        elif key == "points":
            labels_used = list(value.get("labels") or [])
        elif key == "mask":
            labels_used = list((value.get("label_names") or {}).values())
        if tpl.labels:
            bad = sorted({str(x) for x in labels_used if x is not None and x not in tpl.labels})
            if bad:
                raise StoreValidationError(
                    f"labels {bad} are not in template {tpl.name!r}'s label set {tpl.labels}")
        return label, value

    def _upsert(self, s: Session, rows: list[dict]) -> None:
        if not rows:
            return
        keys = ("collection_id", "image_id", "annotator_id")
        changing = ["label", "value", "mask_ref", "source", "time_spent", "updated_at",
                    "updated_by"]
        if self.dialect in ("sqlite", "postgresql"):
            stmt = self._upsert_stmt
            if stmt is None:  # built once: `excluded` makes a new alias of every column
                if self.dialect == "sqlite":
                    from sqlalchemy.dialects.sqlite import insert as upsert
                else:
                    from sqlalchemy.dialects.postgresql import insert as upsert
                stmt = upsert(Annotation.__table__)  # Core, not the ORM bulk path
                stmt = self._upsert_stmt = stmt.on_conflict_do_update(
                    index_elements=list(keys),
                    set_={c: getattr(stmt.excluded, c) for c in changing})
            for start in range(0, len(rows), 1000):  # executemany: one cached statement
                s.execute(stmt, rows[start:start + 1000])
            return
        for row in rows:  # other databases: portable (slower) path
            old = s.scalar(select(Annotation).where(*[getattr(Annotation, k) == row[k]
                                                      for k in keys]))
            if old is None:
                s.add(Annotation(**row))
            else:
                for c in changing:
                    setattr(old, c, row[c])
        s.flush()

    def annotate(self, actor: User | str, collection: str | int, image: int | str,
                 value: dict | None = None, *, label: str | None = None,
                 source: str = "manual", time_spent: float | None = None,
                 annotator: str | None = None, mask_ref: str | None = None) -> AnnotationRecord:
        """Save (insert or replace) the actor's annotation of one image.

        ``image`` is the image id or URI. Labels are checked against the
        template's label set. Only admins may write for another ``annotator``.
        ``mask_ref`` is set by the store only (:meth:`save_mask`); passing one
        is refused, so no annotator can point a reader at another file.
        """
        _refuse_mask_ref([dict(mask_ref=mask_ref)])
        return self._annotate(actor, collection, dict(
            image=image, value=value, label=label, source=source, time_spent=time_spent,
            annotator=annotator))

    def _annotate(self, actor: User | str, collection: str | int,
                  item: dict) -> AnnotationRecord:
        self._annotate_many(actor, collection, [item])
        image, annotator = item["image"], item.get("annotator")
        with self._read() as s:
            coll = self._collection(s, collection)
            img = self._image(s, coll, image)
            who = self._user(s, annotator if annotator is not None else actor)
            ann = s.scalar(select(Annotation).where(
                Annotation.collection_id == coll.id, Annotation.image_id == img.id,
                Annotation.annotator_id == who.id))
            return self._records(s, [ann])[0]

    def annotate_many(self, actor: User | str, collection: str | int,
                      items: Iterable[Mapping[str, Any]], *,
                      source_from_predictions: bool = False) -> int:
        """Save many annotations in ONE transaction (all or nothing).

        Each item: ``image`` (id or URI) and ``label`` and/or ``value``;
        optional ``source``, ``time_spent``, ``annotator`` (``mask_ref`` is
        refused: the store sets it in :meth:`save_mask`). With
        ``source_from_predictions``, an item without a ``source`` is
        ``accepted-model`` when its label is the collection's prediction for
        that image and ``manual`` otherwise (read in the same transaction).
        """
        items = list(items)
        _refuse_mask_ref(items)
        return len(self._annotate_many(actor, collection, items,
                                       source_from_predictions=source_from_predictions))

    def save_review(self, actor: User | str, collection: str | int, image: int | str, *,
                    label: str | None = None, value: dict | None = None,
                    time_spent: float | None = None) -> str:
        """Save the actor's annotation of one image in one transaction, not read back
        (the web service's save); returns the source recorded (``accepted-model``
        when ``label`` is the model's prediction for the image, else ``manual``)."""
        (row,) = self._annotate_many(actor, collection, [dict(
            image=image, label=label, value=value, time_spent=time_spent)],
            source_from_predictions=True)
        return row["source"]

    def _annotate_many(self, actor: User | str, collection: str | int,
                       items: list[Mapping[str, Any]], *,
                       source_from_predictions: bool = False) -> list[dict]:

        def write(s: Session) -> int:
            me = self._actor(s, actor)
            coll, tpl = self._writable_collection(s, me, collection, "annotate it")
            wanted = [it["image"] for it in items]
            uris = sorted({str(x) for x in wanted if not isinstance(x, int)})
            ids = sorted({x for x in wanted if isinstance(x, int)})
            uri_ids: dict[str, int] = {}
            known_ids: set[int] = set()
            predicted: dict[int, str | None] = {}
            # the images of the collection (and, if asked, their predicted labels)
            base = select(Image.uri, Image.id, Prediction.label if source_from_predictions
                          else literal(None)).join(
                CollectionImage, CollectionImage.image_id == Image.id).where(
                CollectionImage.collection_id == coll.id)
            if source_from_predictions:
                base = base.outerjoin(Prediction, and_(Prediction.collection_id == coll.id,
                                                       Prediction.image_id == Image.id))
            for start in range(0, max(len(uris), len(ids)), 500):
                for chunk, col in ((uris[start:start + 500], Image.uri),
                                   (ids[start:start + 500], Image.id)):
                    if chunk:
                        for uri, iid, pred in s.execute(base.where(col.in_(chunk))):
                            known_ids.add(iid)
                            predicted[iid] = pred
                            if col is Image.uri:
                                uri_ids[uri] = iid
            users: dict[str, User] = {me.name: me}
            now = utcnow()
            rows = []
            for item in items:
                image = item["image"]
                iid = image if isinstance(image, int) else uri_ids.get(str(image))
                if iid is None or iid not in known_ids:
                    raise NotFound(f"image {image!r} is not in collection {coll.name!r}")
                source = item.get("source") or "manual"
                if source_from_predictions and not item.get("source"):
                    source = review_source(predicted.get(iid), item.get("label")
                                           if item.get("label") is not None
                                           else (item.get("value") or {}).get("label"))
                if source not in SOURCES:
                    raise StoreValidationError(f"source must be one of {SOURCES}, not {source!r}")
                who_name = item.get("annotator") or me.name
                if who_name not in users:
                    users[who_name] = self._user(s, who_name)
                    who = users[who_name]
                    if who.id != me.id:
                        self._require_admin(me, "write annotations for another annotator")
                        self._require_access(s, who, coll, "be credited with annotations")
                who = users[who_name]
                label, value = self._validate(tpl, item.get("label"), item.get("value") or {})
                ts = _seconds(item.get("time_spent"))
                rows.append(dict(
                    collection_id=coll.id, image_id=iid, annotator_id=who.id, label=label,
                    value=value, mask_ref=item.get("mask_ref"), source=source,
                    time_spent=ts, created_at=now,
                    updated_at=now, created_by=me.id, updated_by=me.id))
            self._upsert(s, rows)
            self._audit(s, me, "annotate", "collection", coll.id, n=len(rows),
                        images=[r["image_id"] for r in rows[:20]])
            return rows

        return self._run_write(write, "save annotations")

    def delete_annotation(self, actor: User | str, collection: str | int, image: int | str,
                          annotator: str | None = None) -> bool:
        def write(s: Session) -> bool:
            me = self._actor(s, actor)
            coll = self._collection(s, collection)
            self._require_access(s, me, coll, "annotate it")
            who = self._user(s, annotator) if annotator else me
            if who.id != me.id:
                self._require_admin(me, "delete another annotator's annotation")
            img = self._image(s, coll, image)
            n = s.execute(delete(Annotation).where(
                Annotation.collection_id == coll.id, Annotation.image_id == img.id,
                Annotation.annotator_id == who.id)).rowcount
            self._audit(s, me, "delete", "annotation", img.id, annotator=who.name)
            return n > 0

        return self._run_write(write, "delete annotation")

    def save_mask(self, actor: User | str, collection: str | int, image: int | str,
                  mask, *, label_names: Mapping[int, str] | None = None,
                  source: str = "manual", time_spent: float | None = None) -> AnnotationRecord:
        """Write a label image as TIFF under ``files_dir/masks`` and record it."""
        import numpy as np

        from expertloop.io import write_tiff

        if self.files_dir is None:
            raise StoreError("this store has no files folder for masks: open it with "
                             "files_dir=... or set EXPERTLOOP_STORE_FILES (a folder every "
                             "team member can read)")
        mask = np.asarray(mask)
        if mask.ndim not in (2, 3) or not np.issubdtype(mask.dtype, np.integer):
            raise StoreValidationError(
                f"a mask must be a 2D or 3D integer label image, got {mask.dtype} {mask.shape}")
        with self._read() as s:
            me = self._actor(s, actor)
            coll = self._collection(s, collection)
            self._require_access(s, me, coll, "annotate it")
            img = self._image(s, coll, image)
            old = s.scalar(select(Annotation.mask_ref).where(
                Annotation.collection_id == coll.id, Annotation.image_id == img.id,
                Annotation.annotator_id == me.id))
        folder = self.files_dir / "masks" / f"c{coll.id}"
        folder.mkdir(parents=True, exist_ok=True)
        # write under a new name, record it, and only then drop the old file:
        # a refused or failed save leaves the saved mask and its record intact
        fd, tmp_name = tempfile.mkstemp(prefix=f".i{img.id}_u{me.id}_", suffix=".tif",
                                        dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        target, fresh = None, False
        try:
            write_tiff(tmp, mask.astype(np.uint16 if mask.max() < 65536 else np.uint32))
            digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
            rel = Path("masks") / f"c{coll.id}" / f"i{img.id}_u{me.id}_{digest[:16]}.tif"
            target = self.files_dir / rel
            fresh = not target.exists()
            os.replace(tmp, target)
            names = {str(int(k)): str(v) for k, v in (label_names or {}).items()}
            rec = self._annotate(actor, collection, dict(
                image=img.id, value={"mask": rel.as_posix(), "sha256": digest,
                                     "shape": list(mask.shape), "label_names": names},
                source=source, time_spent=time_spent, mask_ref=rel.as_posix()))
        except BaseException:
            tmp.unlink(missing_ok=True)
            if target is not None and fresh and old != rel.as_posix():
                target.unlink(missing_ok=True)
            raise
        if old and old != rel.as_posix():
            try:
                self._mask_path(old).unlink(missing_ok=True)
            except (StoreError, OSError):
                pass  # an old file outside the masks folder is never touched
        return rec

    def _mask_path(self, mask_ref: str) -> Path:
        """The file of a mask reference; refused unless inside ``files_dir/masks``."""
        root = (self.files_dir / "masks").resolve()
        path = (self.files_dir / mask_ref).resolve()
        if Path(mask_ref).is_absolute() or not path.is_relative_to(root):
            raise StoreError(f"mask reference {mask_ref!r} points outside the store's "
                             "masks folder; refusing to read it")
        return path

    def load_mask(self, record: AnnotationRecord):
        """The label image of a mask annotation (checks its checksum)."""
        import tifffile

        if not record.mask_ref:
            raise StoreValidationError("this annotation has no mask")
        path = self._mask_path(record.mask_ref)
        if not path.exists():
            raise StoreError(f"mask file {path} is missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != record.value.get("sha256"):
            raise StoreError(f"mask file {path} was changed outside the store (checksum)")
        return tifffile.imread(path)

    def _records(self, s: Session, anns: Iterable[Annotation]) -> list[AnnotationRecord]:
        anns = [a for a in anns if a is not None]
        if not anns:
            return []
        names = _pairs(s.execute(select(User.id, User.name)))
        colls = _pairs(s.execute(select(Collection.id, Collection.name)))
        iids = {a.image_id for a in anns}
        uris: dict[int, str] = {}
        ids = sorted(iids)
        for start in range(0, len(ids), 500):
            uris.update(_pairs(s.execute(select(Image.id, Image.uri).where(
                Image.id.in_(ids[start:start + 500])))))
        return [AnnotationRecord(
            a.id, colls[a.collection_id], a.image_id, uris[a.image_id],
            names[a.annotator_id], a.label, dict(a.value or {}), a.mask_ref, a.source,
            a.time_spent, a.created_at, a.updated_at, names[a.created_by],
            names[a.updated_by]) for a in anns]

    def annotations(self, actor: User | str, collection: str | int, *,
                    annotator: str | None = None) -> list[AnnotationRecord]:
        """The collection's annotations (optionally one annotator's)."""
        return self.search(actor, collection=collection, annotator=annotator)

    def annotation_state(self, actor: User | str, collection: str | int, *,
                         annotator: str | None = None) -> tuple:
        """A cheap fingerprint of the collection's annotations (optionally one annotator's).

        ``(count, highest id, latest update time)``: it changes whenever an
        annotation is added, replaced or deleted, by anyone, through any front
        end. Live views poll it (one indexed aggregate query) and read the
        annotations again only when it changed.
        """
        with self._read() as s:
            me = self._actor(s, actor)
            coll = self._collection(s, collection)
            self._require_access(s, me, coll, "read its annotations")
            conds = [Annotation.collection_id == coll.id]
            if annotator is not None:
                conds.append(Annotation.annotator_id == self._user(s, annotator).id)
            n, top, latest = s.execute(select(
                func.count(Annotation.id), func.max(Annotation.id),
                func.max(Annotation.updated_at)).where(*conds)).one()
            return (int(n), top, latest.isoformat() if hasattr(latest, "isoformat") else latest)

    # ------------------------------------------------------------ predictions
    def push_predictions(self, actor: User | str, collection: str | int,
                         items: Iterable[Mapping[str, Any]], model: str = "") -> list[int]:
        """Store model suggestions (review tasks); see :func:`expertloop.store.push_review_tasks`."""
        items = list(items)

        def write(s: Session) -> list[int]:
            me = self._actor(s, actor)
            self._require_admin(me, "push review tasks")
            coll = self._collection(s, collection)
            tpl = s.get(Template, coll.template_id)
            specs = []
            for it in items:
                uri, meta, tags = _image_spec(it)
                specs.append((uri, dict(it.get("image_meta") or {}), tags))
                lab = it.get("label")
                if lab is not None and tpl.labels and str(lab) not in tpl.labels:
                    raise StoreValidationError(
                        f"predicted label {lab!r} for {uri} is not in template "
                        f"{tpl.name!r}'s label set {tpl.labels}")
            ids = self._add_images(s, me, coll, specs)
            old = {p.image_id: p for p in s.scalars(select(Prediction).where(
                Prediction.collection_id == coll.id))}
            for iid, it in zip(ids, items):
                probs = it.get("probabilities")
                if probs is not None and not isinstance(probs, Mapping):
                    probs = {str(k): float(v) for k, v in zip(tpl.labels, probs)} \
                        if tpl.labels and len(tpl.labels) == len(list(probs)) else \
                        {str(i): float(v) for i, v in enumerate(probs)}
                elif probs is not None:
                    probs = {str(k): float(v) for k, v in probs.items()}
                conf = it.get("confidence")
                fields = dict(label=None if it.get("label") is None else str(it["label"]),
                              confidence=None if conf is None else float(conf),
                              probabilities=probs, meta=dict(it.get("meta") or {}),
                              model=model, created_by=me.id, created_at=utcnow())
                if iid in old:
                    for k, v in fields.items():
                        setattr(old[iid], k, v)
                else:
                    s.add(Prediction(collection_id=coll.id, image_id=iid, **fields))
            self._audit(s, me, "push-predictions", "collection", coll.id, n=len(items),
                        model=model)
            return ids

        return self._run_write(write, "push review tasks")

    def predictions(self, actor: User | str, collection: str | int) -> dict[int, PredictionRecord]:
        with self._read() as s:
            me = self._actor(s, actor)
            coll = self._collection(s, collection)
            self._require_access(s, me, coll, "read it")
            rows = s.execute(select(Prediction, Image.uri).join(
                Image, Image.id == Prediction.image_id).where(
                Prediction.collection_id == coll.id)).all()
            return {p.image_id: PredictionRecord(p.image_id, uri, p.label, p.confidence,
                                                 p.probabilities, dict(p.meta or {}), p.model)
                    for p, uri in rows}

    def prediction(self, actor: User | str, collection: str | int,
                   image: int) -> PredictionRecord | None:
        """The model's suggestion for one image of the collection (None if none)."""
        with self._read() as s:
            coll = self._collection(s, collection)
            self._require_access(s, self._actor(s, actor), coll, "read it")
            row = s.execute(select(Prediction, Image.uri).join(
                Image, Image.id == Prediction.image_id).where(
                Prediction.collection_id == coll.id, Prediction.image_id == int(image))).first()
            if row is None:
                return None
            p, uri = row
            return PredictionRecord(p.image_id, uri, p.label, p.confidence, p.probabilities,
                                    dict(p.meta or {}), p.model)

    # ------------------------------------------------------------ search
    def search(self, actor: User | str, *, collection: str | int | None = None,
               label: str | Sequence[str] | None = None, annotator: str | None = None,
               tag: str | None = None, where: Mapping[str, Any] | None = None,
               task: str | None = None, source: str | None = None,
               agreement: str | None = None, limit: int | None = None
               ) -> list[AnnotationRecord]:
        """Annotations matching every given filter, in the collections the actor may read.

        ``label``: one label or several; ``annotator``: user name; ``tag``: an
        image tag; ``where``: image metadata values (``{"modality": "US"}``);
        ``task``: template name or task type; ``source``: manual / model /
        accepted-model; ``agreement``: ``"agree"`` (every annotator of the
        image gave the same label, at least two annotators) or ``"disagree"``.
        """
        with self._read() as s:
            me = self._actor(s, actor)
            t = Annotation.__table__.c  # plain columns: no ORM objects for big results
            stmt = select(t.id, t.collection_id, t.image_id, t.annotator_id, t.label, t.value,
                          t.mask_ref, t.source, t.time_spent, t.created_at, t.updated_at,
                          t.created_by, t.updated_by, Image.uri).join(
                Image, Image.id == Annotation.image_id)
            conds = []
            if collection is not None:
                coll = self._collection(s, collection)
                self._require_access(s, me, coll, "search it")
                conds.append(Annotation.collection_id == coll.id)
            elif me.role != "admin":
                conds.append(Annotation.collection_id.in_(select(Assignment.collection_id).where(
                    Assignment.user_id == me.id)))
            if label is not None:
                labels = [label] if isinstance(label, str) else list(label)
                conds.append(Annotation.label.in_(labels))
            if annotator is not None:
                who = self._user(s, annotator)
                conds.append(Annotation.annotator_id == who.id)
            if source is not None:
                conds.append(Annotation.source == source)
            attrs = [("tag", str(tag))] if tag is not None else []
            attrs += [(str(k), str(v)) for k, v in (where or {}).items()]
            for k, v in attrs:
                conds.append(Annotation.image_id.in_(select(ImageAttr.image_id).where(
                    ImageAttr.key == k, ImageAttr.value == v)))
            if task is not None:
                tpl_ids = select(Template.id).where(
                    (Template.name == task) | (Template.task_type == task))
                conds.append(Annotation.collection_id.in_(select(Collection.id).where(
                    Collection.template_id.in_(tpl_ids))))
            if agreement is not None:
                if agreement not in ("agree", "disagree"):
                    raise StoreValidationError("agreement must be 'agree' or 'disagree'")
                other = aliased(Annotation)
                grp = select(other.collection_id, other.image_id).where(
                    other.label.is_not(None)).group_by(
                    other.collection_id, other.image_id).having(func.count() >= 2)
                grp = grp.having(func.count(func.distinct(other.label)) ==
                                 1 if agreement == "agree" else
                                 func.count(func.distinct(other.label)) > 1).subquery()
                stmt = stmt.join(grp, and_(grp.c.collection_id == Annotation.collection_id,
                                           grp.c.image_id == Annotation.image_id))
            stmt = stmt.where(*conds).order_by(Annotation.collection_id, Annotation.image_id,
                                               Annotation.annotator_id)
            if limit is not None:
                stmt = stmt.limit(int(limit))
            rows = s.execute(stmt).all()
            if not rows:
                return []
            names = _pairs(s.execute(select(User.id, User.name)))
            colls = _pairs(s.execute(select(Collection.id, Collection.name)))
            return [AnnotationRecord(
                r.id, colls[r.collection_id], r.image_id, r.uri, names[r.annotator_id],
                r.label, dict(r.value or {}), r.mask_ref, r.source, r.time_spent,
                r.created_at, r.updated_at, names[r.created_by], names[r.updated_by])
                for r in rows]

    # ------------------------------------------------------------ reports
    def progress(self, actor: User | str, collection: str | int,
                 annotator: str | None = None) -> dict[str, dict]:
        """``{annotator: {"done", "todo", "total"}}`` for the assigned annotators.

        Annotators see only their own line unless they are admins.
        """
        with self._read() as s:
            me = self._actor(s, actor)
            coll = self._collection(s, collection)
            self._require_access(s, me, coll, "read its progress")
            total = s.scalar(select(func.count()).select_from(CollectionImage).where(
                CollectionImage.collection_id == coll.id))
            done = _pairs(s.execute(select(User.name, func.count(Annotation.id)).join(
                Annotation, Annotation.annotator_id == User.id).where(
                Annotation.collection_id == coll.id).group_by(User.name)))
            names = list(s.scalars(select(User.name).join(
                Assignment, Assignment.user_id == User.id).where(
                Assignment.collection_id == coll.id)))
            names = sorted(set(names) | set(done))
            if annotator is not None:
                if annotator != me.name:
                    self._require_admin(me, "read another annotator's progress")
                names = [annotator]
            elif me.role != "admin":
                names = [me.name]
            return {n: {"done": done.get(n, 0), "todo": total - done.get(n, 0),
                        "total": total} for n in names}

    def report(self, actor: User | str, collection: str | int) -> dict:
        """Completeness and agreement report of a collection (admins only).

        ``annotators``: done / todo / fraction / mean time per assigned
        annotator; ``images_annotated`` (by anyone) and ``images_complete`` (by
        every assigned annotator); ``label_counts``; for image-label tasks
        ``cohen_kappa`` for every pair of annotators (over the images both
        labelled) and ``fleiss_kappa`` over the images labelled by every
        annotator who labelled anything (None when fewer than two such).
        """
        from expertloop.store.agreement import cohen_kappa, fleiss_kappa, fleiss_table

        with self._read() as s:
            me = self._actor(s, actor)
            self._require_admin(me, "read collection reports")
            coll = self._collection(s, collection)
            info = self._info(s, coll)
            rows = s.execute(select(Annotation.image_id, User.name, Annotation.label,
                                    Annotation.time_spent, Annotation.source).join(
                User, User.id == Annotation.annotator_id).where(
                Annotation.collection_id == coll.id)).all()
        total = info.n_images
        by_user: dict[str, dict[int, str | None]] = defaultdict(dict)
        times: dict[str, list] = defaultdict(list)
        sources: dict[str, int] = defaultdict(int)
        label_counts: dict[str, int] = defaultdict(int)
        for iid, name, lab, ts, src in rows:
            by_user[name][iid] = lab
            if ts is not None:
                times[name].append(ts)
            sources[src] += 1
            if lab is not None:
                label_counts[lab] += 1
        names = sorted(set(info.annotators) | set(by_user))
        annotators = {}
        for n in names:
            done = len(by_user.get(n, {}))
            annotators[n] = {
                "done": done, "todo": total - done,
                "fraction": done / total if total else 0.0,
                "mean_time_s": (sum(times[n]) / len(times[n])) if times[n] else None}
        annotated = set().union(*[set(d) for d in by_user.values()]) if by_user else set()
        assigned = [n for n in info.annotators]
        complete = (set.intersection(*[set(by_user.get(n, {})) for n in assigned])
                    if assigned else set())
        out = {"collection": info.name, "template": info.template,
               "task_type": info.task_type, "images": total,
               "images_annotated": len(annotated), "images_complete": len(complete),
               "annotators": annotators, "label_counts": dict(sorted(label_counts.items())),
               "sources": dict(sorted(sources.items())),
               "cohen_kappa": {}, "fleiss_kappa": None, "fleiss_items": 0}
        if info.task_type != "label":
            return out
        raters = [n for n in names if by_user.get(n)]
        for i, a in enumerate(raters):
            for b in raters[i + 1:]:
                common = sorted(set(by_user[a]) & set(by_user[b]))
                if common:
                    out["cohen_kappa"][f"{a}|{b}"] = {
                        "kappa": cohen_kappa([by_user[a][k] for k in common],
                                             [by_user[b][k] for k in common]),
                        "items": len(common)}
        if len(raters) >= 2:
            items = set.intersection(*[set(by_user[n]) for n in raters])
            if items:
                ratings = [[by_user[n][k] for n in raters] for k in sorted(items)]
                out["fleiss_kappa"] = fleiss_kappa(fleiss_table(ratings, info.labels))
                out["fleiss_items"] = len(items)
        return out

    def analyze(self) -> None:
        """Refresh the database's query-planner statistics (``ANALYZE``).

        Worth running after a large import: PostgreSQL otherwise plans with
        stale row counts until autovacuum catches up.
        """
        with self.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()

    def audit_log(self, actor: User | str, limit: int = 100) -> list[dict]:
        """The latest writes (admins only): who did what, when."""
        with self._read() as s:
            me = self._actor(s, actor)
            self._require_admin(me, "read the audit log")
            names = _pairs(s.execute(select(User.id, User.name)))
            rows = s.scalars(select(Audit).order_by(Audit.id.desc()).limit(int(limit)))
            return [{"at": r.at, "actor": names.get(r.actor_id), "action": r.action,
                     "entity": r.entity, "entity_id": r.entity_id, "detail": r.detail}
                    for r in rows]

    def set_role(self, actor: User | str, user: str, role: str) -> None:
        if role not in ROLES:
            raise StoreValidationError(f"role must be one of {ROLES}, not {role!r}")

        def write(s: Session) -> None:
            me = self._actor(s, actor)
            self._require_admin(me, "change roles")
            who = self._user(s, user)
            s.execute(update(User).where(User.id == who.id).values(role=role))
            self._audit(s, me, "set-role", "user", who.id, role=role)

        self._run_write(write, "set role")


def format_report(rep: dict) -> str:
    """A report dict as plain text (the admin panel and the CLI show it)."""
    lines = [f"collection {rep['collection']} (template {rep['template']}, "
             f"{rep['task_type']}): {rep['images']} images, "
             f"{rep['images_annotated']} annotated by someone, "
             f"{rep['images_complete']} by every assigned annotator"]
    for name, a in rep["annotators"].items():
        t = f", {a['mean_time_s']:.1f} s/image" if a["mean_time_s"] is not None else ""
        lines.append(f"  {name}: {a['done']} done, {a['todo']} to do "
                     f"({100 * a['fraction']:.0f} %){t}")
    if rep["label_counts"]:
        lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in rep["label_counts"].items()))
    for pair, ck in rep["cohen_kappa"].items():
        lines.append(f"Cohen's kappa {pair.replace('|', ' vs ')}: {ck['kappa']:.3f} "
                     f"over {ck['items']} images")
    if rep["fleiss_kappa"] is not None:
        lines.append(f"Fleiss' kappa: {rep['fleiss_kappa']:.3f} over {rep['fleiss_items']} "
                     "images")
    return "\n".join(lines)



def expand_images(patterns: Iterable[str]) -> list[str]:
    """Image URIs from paths, glob patterns and URLs (``scheme://...`` kept as is).

    Local paths become absolute; a glob pattern that matches nothing raises
    :class:`StoreValidationError`.
    """
    import glob

    out: list[str] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        if "://" in pattern:
            out.append(pattern)
            continue
        hits = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not hits:
            raise StoreValidationError(f"no file matches {pattern!r}")
        out += [str(Path(h).resolve()) for h in hits]
    return out


def local_path(uri: str) -> Path | None:
    """The local file of a URI (plain path or file://), or None for remote URLs."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        return None
    return Path(uri)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` with the shipped Alembic scripts."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
