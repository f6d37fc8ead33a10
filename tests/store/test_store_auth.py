"""Real logins in the store: argon2 passwords, lockout, API tokens, sessions."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from expertloop.store import PermissionDenied, Store, StoreValidationError, auth
from expertloop.store.models import ApiToken, Credential, User, WebSession


def test_passwords_hashed_initial_must_change_and_own_change(project):
    auth.set_password(project, "ada", "bob", "initial-pass-1")
    with project._read() as s:
        cred = s.get(Credential, project.user("bob").id)
    assert cred.password_hash.startswith("$argon2") and "initial-pass-1" not in cred.password_hash
    ident = auth.login(project, "bob", "initial-pass-1")
    assert (ident.name, ident.role, ident.must_change) == ("bob", "annotator", True)
    with pytest.raises(auth.AuthError, match="current password"):
        auth.set_password(project, "bob", "bob", "bobs-own-pass", old_password="nope")
    auth.set_password(project, "bob", "bob", "bobs-own-pass", old_password="initial-pass-1")
    assert auth.login(project, "bob", "bobs-own-pass").must_change is False
    with pytest.raises(auth.AuthError, match="wrong user name or password"):
        auth.login(project, "bob", "initial-pass-1")
    # annotators cannot set other people's passwords; short passwords refused
    with pytest.raises(PermissionDenied):
        auth.set_password(project, "bob", "cy", "whatever-123")
    with pytest.raises(StoreValidationError):
        auth.set_password(project, "ada", "cy", "short")
    # unknown user and user without a password: the same message
    for name in ("nobody", "cy"):
        with pytest.raises(auth.AuthError, match="wrong user name or password"):
            auth.login(project, name, "whatever-123")


def test_lockout_after_repeated_failures(project):
    auth.set_password(project, None, "cy", "cys-password")
    for _ in range(auth.MAX_FAILED - 1):
        with pytest.raises(auth.AuthError, match="wrong"):
            auth.login(project, "cy", "bad-guess")
    with pytest.raises(auth.AccountLocked):
        auth.login(project, "cy", "bad-guess")
    with pytest.raises(auth.AccountLocked):  # even the right password while locked
        auth.login(project, "cy", "cys-password")
    auth.set_password(project, "ada", "cy", "reset-by-admin")  # an admin reset unlocks
    assert auth.login(project, "cy", "reset-by-admin").name == "cy"


def test_tokens_hashed_revoked_expired(project):
    tok = auth.create_token(project, "bob", name="script")
    with project._read() as s:
        hashes = list(s.scalars(select(ApiToken.token_hash)))
    assert tok not in hashes and len(hashes) == 1
    assert auth.check_token(project, tok).name == "bob"
    with pytest.raises(auth.AuthError, match="unknown"):
        auth.check_token(project, tok + "x")
    [info] = auth.tokens(project, "bob")
    with pytest.raises(auth.AuthError):
        auth.revoke_token(project, "cy", info["id"])  # not cy's
    auth.revoke_token(project, "bob", info["id"])
    with pytest.raises(auth.AuthError, match="revoked"):
        auth.check_token(project, tok)
    old = auth.create_token(project, "ada", "cy", expires_in=timedelta(seconds=-1))
    with pytest.raises(auth.AuthError, match="expired"):
        auth.check_token(project, old)
    with pytest.raises(PermissionDenied):
        auth.create_token(project, "bob", "cy")
    assert [t["user"] for t in auth.tokens(project, "ada")] == ["bob", "cy"]


def test_server_side_sessions(project):
    auth.set_password(project, None, "bob", "bobs-password")
    ident = auth.login(project, "bob", "bobs-password")
    secret, csrf = auth.start_session(project, ident)
    who, csrf2 = auth.session(project, secret)
    assert who.name == "bob" and csrf2 == csrf
    with project._read() as s:
        assert secret not in list(s.scalars(select(WebSession.id_hash)))
    auth.end_session(project, secret)
    with pytest.raises(auth.AuthError):
        auth.session(project, secret)
    expired, _ = auth.start_session(project, ident, hours=-1)
    with pytest.raises(auth.AuthError, match="expired"):
        auth.session(project, expired)
    live, _ = auth.start_session(project, ident)
    auth.set_password(project, "ada", "bob", "new-initial-1")  # ends bob's sessions
    with pytest.raises(auth.AuthError):
        auth.session(project, live)


def test_cli_passwd_and_token(tmp_path):
    proj = tmp_path / "p"
    Store.create(proj, admin="ada").close()

    def cli(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "expertloop.cli", "store", *args],
                              input=stdin, capture_output=True, text=True)

    r = cli("passwd", str(proj), "ada", "--password-stdin", stdin="ada-secret-1\n")
    assert r.returncode == 0, r.stderr
    r = cli("user", str(proj), "bob", "--as", "ada")
    r = cli("passwd", str(proj), "bob", "--as", "ada", "--password-stdin", stdin="bob-first-1\n")
    assert r.returncode == 0 and "initial" in r.stdout
    r = cli("token", str(proj), "--as", "bob", "--name", "nightly", "--days", "1")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    with Store.open(proj) as st:
        assert auth.login(st, "ada", "ada-secret-1").must_change is False
        assert auth.login(st, "bob", "bob-first-1").must_change is True
        assert auth.check_token(st, token).name == "bob"
        [info] = auth.tokens(st, "bob")
    r = cli("token", str(proj), "--as", "bob", "--revoke", str(info["id"]))
    assert r.returncode == 0
    with Store.open(proj) as st, pytest.raises(auth.AuthError, match="revoked"):
        auth.check_token(st, token)


def test_upgrade_from_schema_1_adds_auth_tables(tmp_path):
    from expertloop.store.core import migrate

    proj = tmp_path / "old"
    proj.mkdir()
    old = Store(proj / "expertloop-project.db", _must_exist=False)
    migrate(old.engine, "0001")
    assert old.schema_version() == 1
    old.close()
    with pytest.raises(Exception, match="store upgrade"):
        Store.open(proj)
    with Store.open(proj, upgrade=True) as st:
        assert st.schema_version() == 2
        st._run_write(lambda s: s.add(User(name="ada", role="admin", expertise=[])), "add")
        auth.set_password(st, None, "ada", "ada-secret-1")
        assert auth.login(st, "ada", "ada-secret-1").name == "ada"
