"""The credential store (edge/credentials.py): Digest users and access keys in SQLite."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.credentials import (
    HA1_ALGORITHMS,
    AccessKeyRecord,
    CredentialError,
    CredentialStore,
    KeyStatus,
    UserRecord,
)
from sip.auth import DigestCredentials
from sip.digest import (
    SUPPORTED_ALGORITHMS,
    DigestVerifier,
    NonceFactory,
    Verdict,
    answer_challenge,
    ha1,
)

REALM = "sip.example.org"
CUSTOMER = "0b5e4b63-5d7c-4c6e-9a8e-1f2d3c4b5a69"
PASSWORD = "Plaintext-Password-Never-Stored-42"
NOW = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "credentials.sqlite3"


@pytest.fixture
def store(db_path: Path) -> Iterator[CredentialStore]:
    with CredentialStore(db_path) as s:
        yield s


def raw_bytes(db_path: Path) -> bytes:
    """Everything SQLite wrote: the database and its -wal/-shm files, if any."""
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = Path(str(db_path) + suffix)
        if path.exists():
            data += path.read_bytes()
    return data


def add_alice(store: CredentialStore, **kwargs: object) -> UserRecord:
    return store.add_user("alice", REALM, PASSWORD, CUSTOMER, ["call_create"], now=NOW, **kwargs)


# ---------------------------------------------------------------- users


def test_sha512_256_is_available() -> None:
    # Not skipped where missing: the store would silently keep one hash fewer.
    assert "SHA-512-256" in SUPPORTED_ALGORITHMS, (
        "hashlib has no sha512_256: use a Python built against OpenSSL >= 1.1.1"
    )


@pytest.mark.parametrize("algorithm", HA1_ALGORITHMS)
def test_ha1_matches_sip_digest(store: CredentialStore, algorithm: str) -> None:
    add_alice(store)
    expected = ha1("alice", REALM, PASSWORD, algorithm)
    assert store.ha1("alice", REALM, algorithm) == expected
    # The -sess variant uses the same HA1 (RFC 7616 §3.4.2); names are case-insensitive.
    assert store.ha1("alice", REALM, algorithm + "-sess") == expected
    assert store.ha1("alice", REALM, algorithm.lower()) == expected


def test_ha1_unknowns(store: CredentialStore) -> None:
    add_alice(store)
    assert store.ha1("bob", REALM, "SHA-256") is None
    assert store.ha1("alice", "other.example.org", "SHA-256") is None
    assert store.ha1("ALICE", REALM, "SHA-256") is None  # usernames are case-sensitive
    assert store.ha1("alice", REALM, "SHA-1") is None
    assert store.ha1("alice", REALM, "ha1_md5 FROM users --") is None


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-512-256-sess"])
def test_digest_verifier_accepts_store_ha1(store: CredentialStore, algorithm: str) -> None:
    """The store plugs into DigestVerifier: a client knowing the password is let in."""
    add_alice(store)
    verifier = DigestVerifier(
        NonceFactory(b"n" * 32), algorithms=["SHA-256", "MD5", "SHA-512-256-sess"]
    )
    (challenge,) = verifier.make_challenge(REALM, NOW, "127.0.0.1", algorithms=[algorithm])
    uri = "sip:bob@sip.example.org"
    good = answer_challenge(challenge, "alice", PASSWORD, "INVITE", uri, "c1", 1)
    bad = answer_challenge(challenge, "alice", "wrong-password", "INVITE", uri, "c2", 1)

    def verify(credentials: DigestCredentials) -> Verdict:
        return verifier.verify(
            credentials,
            method="INVITE",
            request_uri=uri,
            ha1=store.ha1("alice", REALM, challenge.effective_algorithm),
            now=NOW,
            client_addr="127.0.0.1",
        )

    assert verify(bad) is Verdict.BAD_RESPONSE
    assert verify(good) is Verdict.OK


def test_user_record(store: CredentialStore) -> None:
    added = store.add_user(
        "alice", REALM, PASSWORD, CUSTOMER.upper(), ["call_create", "call_read", "call_create"]
    )
    assert added.customer_id == CUSTOMER  # canonical form
    assert added.permissions == ("call_create", "call_read")
    assert added.algorithms == HA1_ALGORITHMS
    assert store.user("alice", REALM) == added
    assert store.user("alice", "elsewhere") is None
    text = repr(added)
    assert "ha1" not in text.lower()
    assert PASSWORD not in text
    assert ha1("alice", REALM, PASSWORD, "MD5") not in text


def test_no_plaintext_in_the_file(store: CredentialStore, db_path: Path) -> None:
    add_alice(store)
    store.add_user("bob", REALM, "another-Secret-Pass", CUSTOMER, [])
    for data in (raw_bytes(db_path),):
        assert PASSWORD.encode() not in data
        assert b"another-Secret-Pass" not in data
        # What is there is the HA1.
        assert ha1("alice", REALM, PASSWORD, "SHA-256").encode() in data
    store.close()
    assert PASSWORD.encode() not in raw_bytes(db_path)


def test_removed_user_leaves_no_hash(db_path: Path) -> None:
    with CredentialStore(db_path) as store:
        add_alice(store)
        assert store.remove_user("alice", REALM) is True
        assert store.remove_user("alice", REALM) is False
        assert store.user("alice", REALM) is None
    # secure_delete: the HA1 is overwritten, not just unlinked from the b-tree.
    data = raw_bytes(db_path)
    for algorithm in HA1_ALGORITHMS:
        assert ha1("alice", REALM, PASSWORD, algorithm).encode() not in data


def test_file_mode_is_0600(db_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        with CredentialStore(db_path) as store:
            add_alice(store)
            for suffix in ("", "-wal", "-shm"):
                path = Path(str(db_path) + suffix)
                if path.exists():
                    assert stat.S_IMODE(path.stat().st_mode) == 0o600, suffix
            assert Path(str(db_path) + "-wal").exists()  # WAL mode is on
    finally:
        os.umask(old)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_readable_by_others_is_refused(db_path: Path) -> None:
    CredentialStore(db_path).close()
    db_path.chmod(0o644)
    with pytest.raises(CredentialError, match="chmod 600"):
        CredentialStore(db_path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"this is not sqlite" * 100)
    path.chmod(0o600)
    with pytest.raises(CredentialError, match="not a usable credential database"):
        CredentialStore(path)
    with pytest.raises(CredentialError, match="cannot open"):
        CredentialStore(tmp_path / "no-such-dir" / "db")
    with pytest.raises(CredentialError, match="cannot open"):
        CredentialStore(tmp_path)  # a directory
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(CredentialError, match="not a regular file"):
        CredentialStore(fifo)


def test_newer_schema_is_refused(db_path: Path) -> None:
    CredentialStore(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(CredentialError, match="schema version 99"):
        CredentialStore(db_path)


def test_data_persists(db_path: Path) -> None:
    with CredentialStore(db_path) as store:
        add_alice(store)
        _, key = store.create_key(CUSTOMER, ["trunk"], None, NOW)
    with CredentialStore(db_path) as store:
        assert store.ha1("alice", REALM, "MD5") == ha1("alice", REALM, PASSWORD, "MD5")
        assert store.check_key(key, NOW).status is KeyStatus.VALID


def test_memory_store() -> None:
    with CredentialStore(":memory:") as store:
        add_alice(store)
        assert [u.username for u in store.users()] == ["alice"]


def test_duplicate_user_is_refused(store: CredentialStore) -> None:
    add_alice(store)
    with pytest.raises(CredentialError, match="already exists"):
        store.add_user("alice", REALM, "different-password", CUSTOMER, [])
    # The first one is untouched.
    assert store.ha1("alice", REALM, "MD5") == ha1("alice", REALM, PASSWORD, "MD5")
    # The same name in another realm is another user.
    store.add_user("alice", "other.example.org", PASSWORD, CUSTOMER, [])
    assert [(u.realm, u.username) for u in store.users()] == [
        ("other.example.org", "alice"),
        (REALM, "alice"),
    ]


@pytest.mark.parametrize(
    "username", ["x'or'1'='1", "a;b", "robert');--", "o'brien", "a=b&c=d", "*", "$1"]
)
def test_sql_looking_usernames_are_stored_literally(store: CredentialStore, username: str) -> None:
    add_alice(store)
    store.add_user(username, REALM, PASSWORD, CUSTOMER, ["x"])
    assert store.ha1(username, REALM, "SHA-256") == ha1(username, REALM, PASSWORD, "SHA-256")
    assert store.user(username, REALM) is not None
    assert {u.username for u in store.users()} == {"alice", username}
    assert store.remove_user(username, REALM) is True
    assert store.user("alice", REALM) is not None  # nothing else went with it


@pytest.mark.parametrize(
    "lookup", ["' OR '1'='1", "alice' --", "alice'; DROP TABLE users; --", "%", "_lice", "*"]
)
def test_sql_looking_lookups_find_nothing(store: CredentialStore, lookup: str) -> None:
    add_alice(store)
    assert store.user(lookup, REALM) is None
    assert store.ha1(lookup, REALM, "MD5") is None
    assert store.user("alice", lookup) is None
    assert store.remove_user(lookup, REALM) is False
    assert store.user("alice", REALM) is not None


@pytest.mark.parametrize(
    "username",
    [
        "",
        "a" * 65,
        "alice; DROP TABLE users",  # space
        "alice'--\n",
        "alice@example.org",
        "%61lice",
        'a"b',
        "a\\b",
        "al:ce",
        "ålice",
        "a\x00b",
    ],
)
def test_bad_usernames_are_refused(store: CredentialStore, username: str) -> None:
    with pytest.raises(CredentialError, match="username"):
        store.add_user(username, REALM, PASSWORD, CUSTOMER, [])
    assert store.users() == []


@pytest.mark.parametrize("realm", ["", 'a"b', "a\\b", "a\nb", "r" * 256])
def test_bad_realms_are_refused(store: CredentialStore, realm: str) -> None:
    with pytest.raises(CredentialError, match="realm"):
        store.add_user("alice", realm, PASSWORD, CUSTOMER, [])


def test_bad_values_are_refused(store: CredentialStore) -> None:
    with pytest.raises(CredentialError, match="customer_id must be a UUID"):
        store.add_user("alice", REALM, PASSWORD, "acme", [])
    with pytest.raises(CredentialError, match="not one string"):
        store.add_user("alice", REALM, PASSWORD, CUSTOMER, "call_create")
    with pytest.raises(CredentialError, match="permission"):
        store.add_user("alice", REALM, PASSWORD, CUSTOMER, ["call create"])
    with pytest.raises(CredentialError, match="at most 64"):
        store.add_user("alice", REALM, PASSWORD, CUSTOMER, [f"p{i}" for i in range(65)])
    with pytest.raises(CredentialError, match="password"):
        store.add_user("alice", REALM, "", CUSTOMER, [])
    with pytest.raises(CredentialError, match="password"):
        store.add_user("alice", REALM, "\udcff", CUSTOMER, [])
    assert store.users() == []


def test_unicode_password(store: CredentialStore) -> None:
    store.add_user("alice", REALM, "pässwörd-ñ", CUSTOMER, [])
    assert store.ha1("alice", REALM, "SHA-256") == ha1("alice", REALM, "pässwörd-ñ", "SHA-256")


# ---------------------------------------------------------------- access keys

KEY_RE = re.compile(r"ak_[a-z0-9]{32}")


def test_create_and_check_key(store: CredentialStore) -> None:
    record, key = store.create_key(CUSTOMER, ["trunk_call", "trunk_call"], 3600, NOW)
    assert KEY_RE.fullmatch(key)
    assert record == AccessKeyRecord(
        id=record.id,
        customer_id=CUSTOMER,
        permissions=("trunk_call",),
        tm_create=NOW,
        tm_expire=NOW + 3600,
        tm_delete=None,
    )
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", record.id
    )
    check = store.check_key(key, NOW + 10)
    assert check.status is KeyStatus.VALID and check.valid
    assert check.record == record
    assert key not in repr(record) and key not in repr(check)
    assert store.key(record.id) == record


def test_expired_key(store: CredentialStore) -> None:
    record, key = store.create_key(CUSTOMER, ["p"], 60, NOW)
    assert store.check_key(key, NOW + 59.999).status is KeyStatus.VALID
    check = store.check_key(key, NOW + 60)
    assert check.status is KeyStatus.EXPIRED and not check.valid
    assert check.record == record


def test_key_without_expiry(store: CredentialStore) -> None:
    _, key = store.create_key(CUSTOMER, ["p"], None, NOW)
    assert store.check_key(key, NOW + 100 * 365 * 86400).status is KeyStatus.VALID


def test_revoked_key(store: CredentialStore) -> None:
    record, key = store.create_key(CUSTOMER, ["p"], 60, NOW)
    assert store.revoke_key(record.id, NOW + 5) is True
    check = store.check_key(key, NOW + 10)
    assert check.status is KeyStatus.REVOKED
    assert check.record is not None and check.record.tm_delete == NOW + 5
    # Revoked wins over expired; revoking again changes nothing.
    assert store.check_key(key, NOW + 1000).status is KeyStatus.REVOKED
    assert store.revoke_key(record.id, NOW + 20) is False
    assert store.key(record.id).tm_delete == NOW + 5  # type: ignore[union-attr]


def test_revoke_unknown(store: CredentialStore) -> None:
    assert store.revoke_key("00000000-0000-4000-8000-000000000000", NOW) is False
    assert store.revoke_key("not-a-uuid' OR '1'='1", NOW) is False
    record, _ = store.create_key(CUSTOMER, ["p"], None, NOW)
    # Any spelling of the UUID names the key.
    assert store.revoke_key(record.id.upper(), NOW) is True


def test_unknown_key(store: CredentialStore) -> None:
    _, key = store.create_key(CUSTOMER, ["p"], None, NOW)
    other = "ak_" + ("0" if key[3] != "0" else "1") + key[4:]
    check = store.check_key(other, NOW)
    assert check.status is KeyStatus.UNKNOWN and check.record is None


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "ak_",
        "ak_" + "a" * 31,
        "ak_" + "a" * 33,
        "AK_" + "a" * 32,
        "ak_" + "A" * 32,
        "ak-" + "a" * 32,
        "bk_" + "a" * 32,
        " ak_" + "a" * 32,
        "ak_" + "a" * 32 + "\n",
        "ak_" + "a" * 31 + "_",
        "ak_" + "a" * 31 + "é",
        "ak_' OR '1'='1' --" + "a" * 14,
        "x" * 10_000,
    ],
)
def test_malformed_key(store: CredentialStore, presented: str) -> None:
    store.create_key(CUSTOMER, ["p"], None, NOW)
    check = store.check_key(presented, NOW)
    assert check.status is KeyStatus.MALFORMED and check.record is None


def test_key_hash_is_stored_not_the_key(store: CredentialStore, db_path: Path) -> None:
    _, key = store.create_key(CUSTOMER, ["p"], None, NOW)
    data = raw_bytes(db_path)
    assert key.encode() not in data
    assert key[3:].encode() not in data
    assert hashlib.sha256(key.encode()).hexdigest().encode() in data
    store.close()
    assert key.encode() not in raw_bytes(db_path)


def test_keys_are_random(store: CredentialStore) -> None:
    keys = {store.create_key(CUSTOMER, [], None, NOW)[1] for _ in range(200)}
    assert len(keys) == 200
    assert all(KEY_RE.fullmatch(k) for k in keys)
    # Every character of the alphabet turns up somewhere.
    assert set("".join(k[3:] for k in keys)) == set("abcdefghijklmnopqrstuvwxyz0123456789")


def test_list_excludes_deleted_by_default(store: CredentialStore) -> None:
    first, _ = store.create_key(CUSTOMER, ["a"], None, NOW)
    second, _ = store.create_key(CUSTOMER, ["b"], 10, NOW + 1)
    third, _ = store.create_key(CUSTOMER, ["c"], None, NOW + 2)
    store.revoke_key(second.id, NOW + 3)
    assert [k.id for k in store.keys(include_deleted=False)] == [first.id, third.id]
    listed = store.keys(include_deleted=True)
    assert [k.id for k in listed] == [first.id, second.id, third.id]
    assert listed[1].tm_delete == NOW + 3


def test_bad_key_requests(store: CredentialStore) -> None:
    with pytest.raises(CredentialError, match="UUID"):
        store.create_key("acme", ["p"], None, NOW)
    for bad in (0, -5, float("inf"), float("nan")):
        with pytest.raises(CredentialError, match="expires_in"):
            store.create_key(CUSTOMER, ["p"], bad, NOW)
    with pytest.raises(CredentialError, match="permission"):
        store.create_key(CUSTOMER, ["a b"], None, NOW)
    assert store.keys(include_deleted=True) == []
