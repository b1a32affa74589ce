"""``sipedge users|keys|token``, run in-process through ``cli.main`` with a temporary database."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import time
from pathlib import Path

import pytest

from edge import cli
from edge.credentials import CredentialStore, KeyStatus
from edge.tokens import verify_jwt
from sip.digest import ha1

CUSTOMER = "0b5e4b63-5d7c-4c6e-9a8e-1f2d3c4b5a69"
REALM = "sip.example.org"
PASSWORD = "Correct-Horse-Battery-Staple"
JWT_KEY = "an-hs256-signing-key-of-at-least-32-bytes"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "credentials.sqlite3"


def run(
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    status = cli.main(list(argv), env=env or {})
    out, err = capsys.readouterr()
    return status, out, err


def raw_bytes(db: Path) -> bytes:
    return b"".join(
        Path(str(db) + s).read_bytes() for s in ("", "-wal", "-shm") if Path(str(db) + s).exists()
    )


def add_user(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    db: Path,
    username: str = "alice",
    password: str = PASSWORD,
    *extra: str,
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    return run(
        capsys,
        "users",
        "add",
        username,
        "--customer-id",
        CUSTOMER,
        "--permission",
        "call_create",
        "--permission",
        "call_read",
        "--password-stdin",
        "--database",
        str(db),
        "--realm",
        REALM,
        *extra,
    )


# ---------------------------------------------------------------- users


def test_users_add_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    status, out, err = add_user(capsys, monkeypatch, db)
    assert status == 0, err
    assert "added user 'alice'" in out
    assert PASSWORD not in out + err
    # The database directory and file were created private.
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert PASSWORD.encode() not in raw_bytes(db)
    with CredentialStore(db) as store:
        assert store.ha1("alice", REALM, "SHA-256") == ha1("alice", REALM, PASSWORD, "SHA-256")
        user = store.user("alice", REALM)
    assert user is not None
    assert (user.customer_id, user.permissions) == (CUSTOMER, ("call_create", "call_read"))


def test_users_add_prompts_twice(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return PASSWORD

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    base = ["users", "add", "bob", "--customer-id", CUSTOMER, "--permission", "call_create"]
    status, _, err = run(capsys, *base, "--database", str(db), "--realm", REALM)
    assert status == 0, err
    assert len(prompts) == 2
    with CredentialStore(db) as store:
        assert store.ha1("bob", REALM, "MD5") == ha1("bob", REALM, PASSWORD, "MD5")


def test_users_add_passwords_differ(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    base = ["users", "add", "bob", "--customer-id", CUSTOMER, "--permission", "call_create"]
    status, out, err = run(capsys, *base, "--database", str(db), "--realm", REALM)
    assert status == 2
    assert "passwords differ" in err
    assert PASSWORD not in out + err
    with CredentialStore(db) as store:
        assert store.users() == []


def test_password_is_never_an_argument(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    base = ["users", "add", "alice", "--customer-id", CUSTOMER, "--permission", "p"]
    for flag in ("--password", "-p", "--pass"):
        with pytest.raises(SystemExit) as info:
            cli.main([*base, flag, PASSWORD, "--database", str(db), "--realm", REALM], env={})
        assert info.value.code == 2
    # A stray positional is refused too, rather than taken as the password.
    with pytest.raises(SystemExit):
        cli.main([*base, PASSWORD, "--database", str(db), "--realm", REALM], env={})
    capsys.readouterr()
    assert not db.exists()


def test_short_password_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    status, _, err = add_user(capsys, monkeypatch, db, "alice", "short")
    assert status == 2
    assert "at least 8 characters" in err


def test_duplicate_user_is_refused_before_the_prompt(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    assert add_user(capsys, monkeypatch, db)[0] == 0

    def no_prompt(prompt: str = "") -> str:
        raise AssertionError("asked for a password for a user that exists")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    base = ["users", "add", "alice", "--customer-id", CUSTOMER, "--permission", "call_create"]
    status, _, err = run(capsys, *base, "--database", str(db), "--realm", REALM)
    assert status == 2
    assert "already exists" in err


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["alice", "--customer-id", "acme"], "customer_id must be a UUID"),
        (["al ice", "--customer-id", CUSTOMER], "username"),
        (["alice@x", "--customer-id", CUSTOMER], "username"),
    ],
)
def test_users_add_bad_values(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    db: Path,
    args: list[str],
    problem: str,
) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pytest.fail("prompted"))
    status, _, err = run(
        capsys, "users", "add", *args, "--permission", "p", "--database", str(db), "--realm", REALM
    )
    assert status == 2
    assert problem in err


def test_users_list_and_remove(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    add_user(capsys, monkeypatch, db, "alice")
    add_user(capsys, monkeypatch, db, "bob")
    status, out, _ = run(capsys, "users", "list", "--database", str(db))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "USERNAME",
        "REALM",
        "CUSTOMER_ID",
        "PERMISSIONS",
        "ALGORITHMS",
        "CREATED",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["alice", "bob"]
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[1])
    # No hash is printed, in any algorithm.
    for name in ("alice", "bob"):
        for algorithm in ("MD5", "SHA-256", "SHA-512-256"):
            assert ha1(name, REALM, PASSWORD, algorithm) not in out
    assert not re.search(r"[0-9a-f]{32}", out.replace(CUSTOMER, ""))

    status, out, _ = run(capsys, "users", "list", "--database", str(db), "--json")
    listed = json.loads(out)
    assert [u["username"] for u in listed] == ["alice", "bob"]
    assert set(listed[0]) == {
        "username",
        "realm",
        "customer_id",
        "permissions",
        "algorithms",
        "created",
    }

    assert run(capsys, "users", "remove", "alice", "--database", str(db), "--realm", REALM)[0] == 0
    status, _, err = run(
        capsys, "users", "remove", "alice", "--database", str(db), "--realm", REALM
    )
    assert status == 1
    assert "no user 'alice'" in err
    listed = json.loads(run(capsys, "users", "list", "--database", str(db), "--json")[1])
    assert [u["username"] for u in listed] == ["bob"]


def test_list_without_a_database_creates_nothing(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    for argv in (["users", "list"], ["keys", "list"], ["keys", "revoke", CUSTOMER]):
        status, _, err = run(capsys, *argv, "--database", str(db))
        assert status == 2
        assert "no credential database" in err
    assert not db.exists()


def test_no_database_named(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "users", "list")
    assert status == 2
    assert "--config FILE or --database PATH" in err
    status, _, err = run(capsys, "users", "remove", "alice", "--database", "x.sqlite3")
    assert status == 2
    assert "--realm" in err


# ---------------------------------------------------------------- keys


def create_key(capsys: pytest.CaptureFixture[str], db: Path, *extra: str) -> tuple[str, str, str]:
    """(id, key, stdout) of a new key."""
    status, out, err = run(
        capsys,
        "keys",
        "create",
        "--customer-id",
        CUSTOMER,
        "--permission",
        "trunk_call",
        "--database",
        str(db),
        *extra,
    )
    assert status == 0, err
    assert "shown only this once" in err
    (key,) = re.findall(r"ak_[a-z0-9]{32}", out)
    (key_id,) = re.findall(r"^id:\s+(\S+)$", out, re.M)
    return key_id, key, out


def test_keys_create_prints_the_key_once(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    key_id, key, out = create_key(capsys, db, "--expires-days", "30")
    assert out.count(key) == 1
    assert "expires:     never" not in out
    data = raw_bytes(db)
    assert key.encode() not in data
    assert hashlib.sha256(key.encode()).hexdigest().encode() in data
    with CredentialStore(db) as store:
        check = store.check_key(key, time.time())
        assert check.status is KeyStatus.VALID
        assert check.record is not None and check.record.id == key_id
        assert check.record.tm_expire is not None
        assert check.record.tm_expire - check.record.tm_create == 30 * 86400
    # Nothing lists it again.
    for argv in (["keys", "list"], ["keys", "list", "--json"], ["keys", "list", "--all"]):
        status, listed, err = run(capsys, *argv, "--database", str(db))
        assert status == 0
        assert key not in listed + err
        assert key[3:] not in listed
        assert key_id in listed


def test_keys_list_and_revoke(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    first, _, out = create_key(capsys, db)
    assert "expires:     never" in out
    second, second_key, _ = create_key(capsys, db)
    status, out, _ = run(capsys, "keys", "list", "--database", str(db))
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "CUSTOMER_ID", "PERMISSIONS", "CREATED", "EXPIRES", "STATUS"]
    assert {line.split()[0] for line in lines[1:]} == {first, second}

    status, out, _ = run(capsys, "keys", "revoke", second, "--database", str(db))
    assert (status, out.strip()) == (0, f"revoked key {second}")
    status, _, err = run(capsys, "keys", "revoke", second, "--database", str(db))
    assert status == 1
    assert "no live key" in err

    listed = json.loads(run(capsys, "keys", "list", "--json", "--database", str(db))[1])
    assert [k["id"] for k in listed] == [first]
    assert listed[0]["status"] == "valid"
    assert listed[0]["expires"] == "never"
    every = json.loads(run(capsys, "keys", "list", "--all", "--json", "--database", str(db))[1])
    assert {k["id"]: k["status"] for k in every} == {first: "valid", second: "revoked"}
    with CredentialStore(db) as store:
        assert store.check_key(second_key, 1e12).status is KeyStatus.REVOKED


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--customer-id", "acme", "--permission", "p"], "UUID"),
        (["--customer-id", CUSTOMER, "--permission", "p", "--expires-days", "0"], "expires-days"),
        (["--customer-id", CUSTOMER, "--permission", "a b"], "permission"),
    ],
)
def test_keys_create_bad_values(
    capsys: pytest.CaptureFixture[str], db: Path, args: list[str], problem: str
) -> None:
    status, out, err = run(capsys, "keys", "create", *args, "--database", str(db))
    assert status == 2
    assert problem in err
    assert "ak_" not in out
    assert not db.exists()


def test_keys_revoke_unknown(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    create_key(capsys, db)
    status, _, err = run(capsys, "keys", "revoke", "nope", "--database", str(db))
    assert status == 1
    assert "no live key with id 'nope'" in err


# ---------------------------------------------------------------- token


def test_token_create(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys,
        "token",
        "create",
        "--customer-id",
        CUSTOMER,
        "--permission",
        "call_create",
        "--agent-id",
        "agent-7",
        "--lifetime",
        "600",
        env={"JWT_KEY": JWT_KEY},
    )
    assert status == 0, err
    assert err == ""
    token = out.strip()
    claims = verify_jwt(token, JWT_KEY.encode(), time.time())
    assert (claims.customer_id, claims.agent_id, claims.permissions) == (
        CUSTOMER,
        "agent-7",
        ("call_create",),
    )
    assert claims.exp - claims.iat == 600
    assert JWT_KEY not in out


def test_token_create_needs_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["token", "create", "--customer-id", CUSTOMER, "--permission", "p"]
    status, out, err = run(capsys, *base)
    assert (status, out) == (2, "")
    assert "JWT_KEY is not set" in err
    status, out, err = run(capsys, *base, env={"JWT_KEY": "too-short-a-secret"})
    assert (status, out) == (2, "")
    assert "at least 32 bytes" in err
    assert "too-short-a-secret" not in err


def test_token_create_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"JWT_KEY": JWT_KEY}
    base = ["token", "create", "--permission", "p"]
    assert run(capsys, *base, "--customer-id", "acme", env=env)[0] == 2
    status, _, err = run(capsys, *base, "--customer-id", CUSTOMER, "--lifetime", "90000", env=env)
    assert status == 2
    assert "--lifetime" in err
    status, _, err = run(capsys, *base, "--customer-id", CUSTOMER, "--agent-id", "", env=env)
    assert status == 2


# ---------------------------------------------------------------- --config


def test_settings_from_the_config_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """auth.database is relative to the working directory; auth.realm is the users' realm."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "sipedge.toml"
    path.write_text(
        '[upstream]\necho = true\n[auth]\nrealm = "cfg.example.org"\n'
        'database = "data/creds.sqlite3"\njwt_key_env = "MY_JWT_KEY"\njwt_max_lifetime = 600.0\n'
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    status, _, err = run(
        capsys,
        "users",
        "add",
        "carol",
        "--customer-id",
        CUSTOMER,
        "--permission",
        "p",
        "--password-stdin",
        "--config",
        str(path),
    )
    assert status == 0, err
    db = tmp_path / "data" / "creds.sqlite3"
    with CredentialStore(db) as store:
        assert store.ha1("carol", "cfg.example.org", "MD5") == ha1(
            "carol", "cfg.example.org", PASSWORD, "MD5"
        )
    create_args = ["--customer-id", CUSTOMER, "--permission", "p"]
    status, out, _ = run(capsys, "keys", "create", *create_args, "--config", str(path))
    assert status == 0 and "ak_" in out
    listed = json.loads(run(capsys, "users", "list", "--json", "--config", str(path))[1])
    assert [(u["username"], u["realm"]) for u in listed] == [("carol", "cfg.example.org")]
    # --realm and --database override the file.
    status, _, err = run(
        capsys, "users", "remove", "carol", "--config", str(path), "--realm", "other.example"
    )
    assert status == 1
    assert run(capsys, "users", "remove", "carol", "--config", str(path))[0] == 0

    # token create takes the key from the variable auth.jwt_key_env names, and
    # its lifetime bound from auth.jwt_max_lifetime.
    base = ["token", "create", *create_args, "--config", str(path)]
    status, _, err = run(capsys, *base, env={"JWT_KEY": JWT_KEY})
    assert status == 2
    assert "MY_JWT_KEY is not set" in err
    status, _, err = run(capsys, *base, "--lifetime", "3600", env={"MY_JWT_KEY": JWT_KEY})
    assert status == 2
    assert "--lifetime" in err
    status, out, err = run(capsys, *base, "--lifetime", "600", env={"MY_JWT_KEY": JWT_KEY})
    assert status == 0, err
    assert verify_jwt(out.strip(), JWT_KEY.encode(), time.time()).customer_id == CUSTOMER


def test_bad_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "sipedge.toml"
    path.write_text('[upstream]\necho = true\n[auth]\nrealm = "bad\\"realm"\n')
    status, _, err = run(capsys, "users", "list", "--config", str(path))
    assert status == 2
    assert "auth.realm" in err
    status, _, err = run(capsys, "users", "list", "--config", str(tmp_path / "missing.toml"))
    assert status == 2
    assert "cannot read" in err


def test_help_mentions_no_password_flag(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["users", "add", "--help"],
        ["keys", "create", "--help"],
        ["token", "create", "--help"],
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(argv, env={})
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "--password " not in out
        assert "--customer-id" in out
    with pytest.raises(SystemExit):
        cli.main(["users", "add", "--help"], env={})
    assert "--password-stdin" in capsys.readouterr().out
