"""Authentication over a :class:`~expertloop.store.core.Store`.

Identity in the store used to be declared ("I am ada"); these functions make it
proven: argon2 password hashes, login lockout after repeated failures, per-user
API tokens and server-side sessions. Only hashes are stored: an API token or a
session secret is shown once, at creation, and kept as its SHA-256 (they are
random 256-bit values, so a fast hash is enough; passwords use argon2).

Admins set an initial password for an account (``must_change`` is then set and
the user is expected to change it at first login); users change their own.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update

from .core import PermissionDenied, Store, StoreValidationError
from .models import ApiToken, Credential, User, WebSession, utcnow

#: failed logins in a row before the account is locked for ``LOCK_MINUTES``
MAX_FAILED = 5
LOCK_MINUTES = 15
MIN_PASSWORD = 8
SESSION_HOURS = 12


class AuthError(PermissionDenied):
    """Wrong credentials, locked account, expired or revoked token/session."""


class AccountLocked(AuthError):
    pass


@dataclass(frozen=True)
class Identity:
    user_id: int
    name: str
    role: str
    must_change: bool = False


#: argon2 cost parameters (``argon2.PasswordHasher`` keywords); empty: the library's
#: recommended defaults. Tests lower them to keep the suite fast; verification reads
#: the parameters of each stored hash, so old hashes keep working after a change.
HASH_PARAMS: dict = {}


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher(**HASH_PARAMS)


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise StoreValidationError(f"a password needs at least {MIN_PASSWORD} characters")


def set_password(store: Store, actor: str | int | None, user: str | int, password: str, *,
                 old_password: str | None = None) -> None:
    """Set ``user``'s password.

    An admin ``actor`` may set anyone's password: it is an initial one that must be
    changed (``must_change``). With ``actor=None`` (or the user themself) the user
    changes their own, and ``old_password`` must match the current one if they have one.
    ``actor=None`` is for the local ``expertloop store passwd`` command, run by whoever
    can already write the project's database.
    """
    _check_password(password)
    digest = _hasher().hash(password)

    def write(s):
        who = store._user(s, user)
        cred = s.get(Credential, who.id)
        me = who if actor is None else store._actor(s, actor)
        own = me.id == who.id
        if not own:
            store._require_admin(me, "set other users' passwords")
        elif actor is not None and cred is not None:
            if old_password is None or not _verify_hash(cred.password_hash, old_password):
                raise AuthError("the current password is wrong")
        values = dict(password_hash=digest, must_change=not own, failed_attempts=0,
                      locked_until=None, changed_at=utcnow())
        if cred is None:
            s.add(Credential(user_id=who.id, **values))
        else:
            s.execute(update(Credential).where(Credential.user_id == who.id).values(**values))
        # a new password ends every session of that user
        s.execute(delete(WebSession).where(WebSession.user_id == who.id))
        store._audit(s, me, "set-password", "user", who.id, initial=not own)

    store._run_write(write, "set password")


def _verify_hash(digest: str, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return _hasher().verify(digest, password)
    except (VerificationError, InvalidHashError):
        return False


def login(store: Store, name: str, password: str) -> Identity:
    """Check ``name``/``password``; count failures and lock after ``MAX_FAILED``.

    Unknown users, users without a password and wrong passwords all raise the
    same :class:`AuthError` message (no user enumeration)."""
    now = utcnow()
    with store._read() as s:
        user = s.scalar(select(User).where(User.name == str(name)))
        cred = s.get(Credential, user.id) if user is not None else None
    if user is None or cred is None:
        _hasher().hash(password)  # similar time for unknown users
        raise AuthError("wrong user name or password")
    if cred.locked_until is not None and cred.locked_until > now:
        raise AccountLocked(f"too many failed logins: locked until {cred.locked_until:%H:%M} UTC")
    ok = _verify_hash(cred.password_hash, password)

    def write(s):
        if ok:
            s.execute(update(Credential).where(Credential.user_id == user.id)
                      .values(failed_attempts=0, locked_until=None))
            return None
        c = s.get(Credential, user.id)
        failed = c.failed_attempts + 1
        locked = now + timedelta(minutes=LOCK_MINUTES) if failed >= MAX_FAILED else None
        s.execute(update(Credential).where(Credential.user_id == user.id)
                  .values(failed_attempts=0 if locked else failed, locked_until=locked))
        if locked:
            store._audit(s, user, "locked", "user", user.id, failed=failed)
        return locked

    locked = store._run_write(write, "record login")
    if not ok:
        if locked is not None:
            raise AccountLocked(f"too many failed logins: locked until {locked:%H:%M} UTC")
        raise AuthError("wrong user name or password")
    return Identity(user.id, user.name, user.role, bool(cred.must_change))


# ------------------------------------------------------------------ API tokens
def create_token(store: Store, actor: str | int, user: str | int | None = None, *,
                 name: str = "", expires_in: timedelta | None = None) -> str:
    """A new API token for ``user`` (default: ``actor``); admins may make them for
    others. The plain token is returned once; only its SHA-256 is stored."""
    token = "elt_" + secrets.token_urlsafe(32)

    def write(s):
        me = store._actor(s, actor)
        who = me if user is None else store._user(s, user)
        if who.id != me.id:
            store._require_admin(me, "create tokens for other users")
        expires = utcnow() + expires_in if expires_in is not None else None
        row = ApiToken(user_id=who.id, name=str(name), token_hash=_sha(token),
                       expires_at=expires)
        s.add(row)
        s.flush()
        store._audit(s, me, "create", "token", row.id, user=who.name, name=str(name))

    store._run_write(write, "create token")
    return token


def tokens(store: Store, actor: str | int) -> list[dict]:
    """The actor's tokens (all tokens for an admin), without any secret."""
    with store._read() as s:
        me = store._actor(s, actor)
        q = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id)
        if me.role != "admin":
            q = q.where(ApiToken.user_id == me.id)
        return [{"id": t.id, "user": u, "name": t.name, "created_at": t.created_at,
                 "expires_at": t.expires_at, "revoked_at": t.revoked_at}
                for t, u in s.execute(q.order_by(ApiToken.id))]


def revoke_token(store: Store, actor: str | int, token_id: int) -> None:
    def write(s):
        me = store._actor(s, actor)
        row = s.get(ApiToken, int(token_id))
        if row is None or (row.user_id != me.id and me.role != "admin"):
            raise AuthError(f"no token {token_id} of yours")
        s.execute(update(ApiToken).where(ApiToken.id == row.id).values(revoked_at=utcnow()))
        store._audit(s, me, "revoke", "token", row.id)

    store._run_write(write, "revoke token")


def _with_identity(*cols, via):
    """``cols`` plus the identity of the user ``via`` points at: ONE query per
    request (token and session checks run on every request of the web service)."""
    return select(*cols, User.id, User.name, User.role, Credential.must_change).join(
        User, User.id == via).outerjoin(Credential, Credential.user_id == User.id)


def _identity_of(row) -> Identity:
    return Identity(row.id, row.name, row.role, bool(row.must_change))


def check_token(store: Store, token: str) -> Identity:
    """The identity of a valid (not revoked, not expired) API token."""
    with store._read() as s:
        row = s.execute(_with_identity(ApiToken.revoked_at, ApiToken.expires_at,
                                       via=ApiToken.user_id).where(
            ApiToken.token_hash == _sha(str(token)))).first()
    if row is None:
        raise AuthError("unknown API token")
    if row.revoked_at is not None:
        raise AuthError("this API token was revoked")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise AuthError("this API token has expired")
    return _identity_of(row)


# ------------------------------------------------------------------ sessions
def start_session(store: Store, identity: Identity, *,
                  hours: float = SESSION_HOURS) -> tuple[str, str]:
    """(session secret for the cookie, CSRF token) of a new server-side session."""
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = utcnow()

    def write(s):
        s.execute(delete(WebSession).where(WebSession.expires_at <= now))
        s.add(WebSession(id_hash=_sha(secret), user_id=identity.user_id, csrf=csrf,
                         created_at=now, expires_at=now + timedelta(hours=hours)))

    store._run_write(write, "start session")
    return secret, csrf


def session(store: Store, secret: str) -> tuple[Identity, str]:
    """(identity, CSRF token) of a live session; :class:`AuthError` otherwise."""
    with store._read() as s:
        row = s.execute(_with_identity(WebSession.expires_at, WebSession.csrf,
                                       via=WebSession.user_id).where(
            WebSession.id_hash == _sha(str(secret)))).first()
    if row is None or row.expires_at <= utcnow():
        raise AuthError("not logged in (no session or it expired)")
    return _identity_of(row), row.csrf


def end_session(store: Store, secret: str) -> None:
    store._run_write(lambda s: s.execute(
        delete(WebSession).where(WebSession.id_hash == _sha(str(secret)))), "end session")

