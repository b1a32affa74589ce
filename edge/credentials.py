"""The credential store: SIP Digest users and trunk access keys in one SQLite file.

Nothing here can give back a secret it was handed:

* users (RFC 7616, RFC 8760 Digest): the password is hashed into HA1 =
  H(username ":" realm ":" password) for each hash function this Python has
  (MD5, SHA-256, SHA-512-256) when the user is added, and thrown away.  HA1
  is what :class:`sip.digest.DigestVerifier` needs (:meth:`CredentialStore.ha1`);
  it is password-equivalent for that realm, hence the file mode below, but it
  is not the password.
* access keys (``Authorization: AccessKey ak_...`` from server-to-server
  trunks): only SHA-256 of the key is kept.  A plain hash is enough (no salt,
  no slow hash): at 165 random bits there is no dictionary to attack, and
  lookup by hash is an index probe.  The key itself is returned once, by
  :meth:`CredentialStore.create_key`.

Rules of this file:

- Parameterized queries only: query text is literal (module constants at
  most), every value is a ``?`` parameter.  The HA1 column of an algorithm is
  picked from a fixed table of whole queries, never spliced from input.
- The database file is created with mode 0600 before SQLite opens it, and an
  existing file that others can read is refused: HA1 values and key hashes are
  worth stealing.  SQLite gives its -wal and -shm files the same mode.
- Times are epoch seconds (float).  Methods that make a decision take ``now``
  from the caller, like the rest of the proxy.
- Errors are :class:`CredentialError` with one line for an operator; no
  password, key or hash ever appears in a message or a ``repr``.

One :class:`CredentialStore` is one connection, used from one thread (the
event loop's, or the CLI's).  Several processes may share the file: WAL mode
lets the proxy read while ``sipedge users add`` writes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import secrets
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from sip.digest import SUPPORTED_ALGORITHMS, ha1
from sip.errors import SipError

__all__ = [
    "HA1_ALGORITHMS",
    "AccessKeyRecord",
    "CredentialError",
    "CredentialStore",
    "KeyCheck",
    "KeyStatus",
    "UserRecord",
    "canonical_permissions",
    "canonical_uuid",
    "check_username",
]

MEMORY = ":memory:"
SCHEMA_VERSION = 1

#: The hash functions an HA1 is kept for (the -sess variants share their base's).
HA1_ALGORITHMS = ("MD5", "SHA-256", "SHA-512-256")

# user = 1*( unreserved / escaped / user-unreserved )             (RFC 3261 §25.1)
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
# Escapes are left out: "%61lice" and "alice" would be two users who look alike.
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/]{1,64}")
# A permission name: call_create, trunk.read, admin:*.
_PERMISSION_RE = re.compile(r"[A-Za-z0-9_.:*-]{1,64}")
MAX_PERMISSIONS = 64
MAX_REALM_LEN = 255
MAX_PASSWORD_LEN = 1024

# ak_ + 32 characters of [a-z0-9]: log2(36) * 32 = 165 bits.
KEY_PREFIX = "ak_"
_KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_KEY_LEN = 32
_KEY_RE = re.compile(r"ak_[a-z0-9]{32}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT NOT NULL,
    realm TEXT NOT NULL,
    ha1_md5 TEXT,
    ha1_sha256 TEXT,
    ha1_sha512_256 TEXT,
    customer_id TEXT NOT NULL,
    permissions TEXT NOT NULL,
    tm_create REAL NOT NULL,
    PRIMARY KEY (username, realm)
) STRICT;
CREATE TABLE IF NOT EXISTS access_keys (
    id TEXT PRIMARY KEY NOT NULL,
    customer_id TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    permissions TEXT NOT NULL,
    tm_create REAL NOT NULL,
    tm_expire REAL,
    tm_delete REAL
) STRICT;
"""

# One literal query per HA1 column: the column name never comes from input.
_HA1_QUERIES = {
    "MD5": "SELECT ha1_md5 FROM users WHERE username = ? AND realm = ?",
    "SHA-256": "SELECT ha1_sha256 FROM users WHERE username = ? AND realm = ?",
    "SHA-512-256": "SELECT ha1_sha512_256 FROM users WHERE username = ? AND realm = ?",
}
_USER_COLUMNS = (
    "username, realm, customer_id, permissions, tm_create, "
    "ha1_md5 IS NOT NULL, ha1_sha256 IS NOT NULL, ha1_sha512_256 IS NOT NULL"
)
_KEY_COLUMNS = "id, customer_id, permissions, tm_create, tm_expire, tm_delete"


class CredentialError(Exception):
    """Refused: bad input, a duplicate, or a database file that cannot be used."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A Digest user.  ``algorithms`` says which HA1 hashes are stored (not the hashes)."""

    username: str
    realm: str
    customer_id: str
    permissions: tuple[str, ...]
    tm_create: float
    algorithms: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class AccessKeyRecord:
    """An access key, without the key or its hash."""

    id: str
    customer_id: str
    permissions: tuple[str, ...]
    tm_create: float
    tm_expire: float | None
    tm_delete: float | None


class KeyStatus(enum.Enum):
    VALID = "valid"
    EXPIRED = "expired"
    #: Soft-deleted by ``sipedge keys revoke``; takes precedence over EXPIRED.
    REVOKED = "revoked"
    #: Well formed, but no key has this hash.
    UNKNOWN = "unknown"
    #: Not ``ak_`` followed by 32 of [a-z0-9]: not looked up at all.
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What :meth:`CredentialStore.check_key` found; ``record`` when the key is known."""

    status: KeyStatus
    record: AccessKeyRecord | None = None

    @property
    def valid(self) -> bool:
        return self.status is KeyStatus.VALID


# ---------------------------------------------------------------- validation


def canonical_uuid(value: str, what: str = "customer_id") -> str:
    """``value`` as a lower-case hyphenated UUID; CredentialError naming ``what`` if it is none."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise CredentialError(f"{what} must be a UUID") from None


def canonical_permissions(permissions: Iterable[str]) -> tuple[str, ...]:
    """Checked permission names, duplicates dropped, order kept; CredentialError if bad."""
    if isinstance(permissions, str):
        # A lone string would otherwise become one permission per character.
        raise CredentialError("permissions must be a list of names, not one string")
    result: list[str] = []
    for p in permissions:
        if not isinstance(p, str) or _PERMISSION_RE.fullmatch(p) is None:
            raise CredentialError(
                f"permission {p!r} is not a name of 1-64 characters from [A-Za-z0-9_.:*-]"
            )
        if p not in result:
            result.append(p)
    if len(result) > MAX_PERMISSIONS:
        raise CredentialError(f"at most {MAX_PERMISSIONS} permissions")
    return tuple(result)


def check_username(username: str) -> None:
    """CredentialError unless ``username`` is a SIP user part we store."""
    if not isinstance(username, str) or _USER_RE.fullmatch(username) is None:
        raise CredentialError(
            "username must be 1-64 characters of a SIP URI user part "
            "(letters, digits and -_.!~*'()&=+$,;?/; no escapes)"
        )


def _check_realm(realm: str) -> None:
    # Sent in a quoted-string (RFC 3261 §25.1): no quote, backslash or control.
    if (
        not isinstance(realm, str)
        or not 0 < len(realm) <= MAX_REALM_LEN
        or not realm.isprintable()
        or '"' in realm
        or "\\" in realm
    ):
        raise CredentialError(
            f"realm must be 1-{MAX_REALM_LEN} printable characters without quotes or backslashes"
        )


def _ha1_algorithm(algorithm: str) -> str | None:
    """The HA1 column an algorithm uses (``SHA-256-sess`` -> ``SHA-256``), or None."""
    base = algorithm.upper().removesuffix("-SESS")
    return base if base in _HA1_QUERIES else None


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


# ---------------------------------------------------------------- the store


def _open_private(path: str) -> None:
    """Create ``path`` with mode 0600 if missing; refuse it if others can read it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CredentialError(f"cannot open credential database {path!r}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CredentialError(f"credential database {path!r} is not a regular file")
        if mode & 0o077:
            raise CredentialError(
                f"credential database {path!r} is accessible by other users "
                f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it"
            )
    finally:
        os.close(fd)


class CredentialStore:
    """Digest users and access keys in SQLite at ``path`` (``":memory:"`` for tests).

    The schema is created if missing.  Use as a context manager, or call
    :meth:`close`.
    """

    __slots__ = ("_db", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if self.path != MEMORY:
            _open_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise CredentialError(f"cannot open credential database {self.path!r}: {e}") from None
        try:
            self._setup()
        except sqlite3.Error as e:
            self._db.close()
            raise CredentialError(
                f"{self.path!r} is not a usable credential database: {e}"
            ) from None

    def _setup(self) -> None:
        db = self._db
        if self.path != MEMORY:
            db.execute("PRAGMA journal_mode = WAL")
        # Writers from the CLI are short; a reader may wait for one briefly.
        db.execute("PRAGMA busy_timeout = 5000")
        # Deleted rows are overwritten, so a removed user's HA1 does not linger.
        db.execute("PRAGMA secure_delete = ON")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise CredentialError(
                f"credential database {self.path!r} has schema version {version}; "
                f"this sipedge knows up to {SCHEMA_VERSION}"
            )
        db.executescript(_SCHEMA)
        db.execute("PRAGMA user_version = 1")  # SCHEMA_VERSION; pragmas take no parameters

    def __repr__(self) -> str:
        return f"CredentialStore({self.path!r})"

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CredentialStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ users

    def add_user(
        self,
        username: str,
        realm: str,
        password: str,
        customer_id: str,
        permissions: Iterable[str],
        *,
        now: float | None = None,
    ) -> UserRecord:
        """Add a user; the password is hashed into HA1 per algorithm and not kept.

        Raises :class:`CredentialError` for a bad value or an existing
        (username, realm).
        """
        check_username(username)
        _check_realm(realm)
        if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD_LEN:
            raise CredentialError(f"password must be 1-{MAX_PASSWORD_LEN} characters")
        customer = canonical_uuid(customer_id, "customer_id")
        perms = canonical_permissions(permissions)
        hashes: dict[str, str | None] = {}
        for name in HA1_ALGORITHMS:
            if name not in SUPPORTED_ALGORITHMS:
                hashes[name] = None  # this hashlib lacks it (FIPS, old OpenSSL)
                continue
            try:
                hashes[name] = ha1(username, realm, password, name)
            except SipError:
                raise CredentialError("password is not valid text (UTF-8)") from None
        created = time.time() if now is None else now
        try:
            self._db.execute(
                "INSERT INTO users (username, realm, ha1_md5, ha1_sha256, ha1_sha512_256, "
                "customer_id, permissions, tm_create) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    username,
                    realm,
                    hashes["MD5"],
                    hashes["SHA-256"],
                    hashes["SHA-512-256"],
                    customer,
                    json.dumps(perms),
                    created,
                ),
            )
        except sqlite3.IntegrityError:
            raise CredentialError(f"user {username!r} already exists in realm {realm!r}") from None
        return UserRecord(
            username=username,
            realm=realm,
            customer_id=customer,
            permissions=perms,
            tm_create=created,
            algorithms=tuple(n for n in HA1_ALGORITHMS if hashes[n] is not None),
        )

    @staticmethod
    def _user(row: tuple[str, str, str, str, float, int, int, int]) -> UserRecord:
        username, realm, customer, perms, created, *have = row
        return UserRecord(
            username=username,
            realm=realm,
            customer_id=customer,
            permissions=tuple(json.loads(perms)),
            tm_create=created,
            algorithms=tuple(n for n, h in zip(HA1_ALGORITHMS, have, strict=True) if h),
        )

    def user(self, username: str, realm: str) -> UserRecord | None:
        row = self._db.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE username = ? AND realm = ?",
            (username, realm),
        ).fetchone()
        return None if row is None else self._user(row)

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        """The stored HA1 for :meth:`sip.digest.DigestVerifier.verify`, or None.

        ``algorithm`` is the Digest algorithm as negotiated (``MD5``,
        ``SHA-256-sess`` ...; case-insensitive).  None for an unknown user or
        an algorithm without a stored hash; the verifier then does the same
        work as for a wrong password.
        """
        column = _ha1_algorithm(algorithm)
        if column is None:
            return None
        row = self._db.execute(_HA1_QUERIES[column], (username, realm)).fetchone()
        return None if row is None else row[0]

    def users(self) -> list[UserRecord]:
        rows = self._db.execute(
            f"SELECT {_USER_COLUMNS} FROM users ORDER BY realm, username"
        ).fetchall()
        return [self._user(row) for row in rows]

    def remove_user(self, username: str, realm: str) -> bool:
        """Delete the user; False if there was none."""
        cursor = self._db.execute(
            "DELETE FROM users WHERE username = ? AND realm = ?", (username, realm)
        )
        return cursor.rowcount > 0

    # ------------------------------------------------------------ access keys

    def create_key(
        self,
        customer_id: str,
        permissions: Iterable[str],
        expires_in: float | None,
        now: float,
    ) -> tuple[AccessKeyRecord, str]:
        """A new access key: its record and the key itself, which is not kept.

        ``expires_in`` is seconds from ``now``, or None for a key that lasts
        until revoked.
        """
        customer = canonical_uuid(customer_id, "customer_id")
        perms = canonical_permissions(permissions)
        if expires_in is not None and not (0 < expires_in < float("inf")):
            raise CredentialError("expires_in must be a positive number of seconds")
        key = KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_LEN))
        record = AccessKeyRecord(
            id=str(uuid.uuid4()),
            customer_id=customer,
            permissions=perms,
            tm_create=now,
            tm_expire=None if expires_in is None else now + expires_in,
            tm_delete=None,
        )
        self._db.execute(
            "INSERT INTO access_keys (id, customer_id, key_hash, permissions, tm_create, "
            "tm_expire, tm_delete) VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (
                record.id,
                record.customer_id,
                _key_hash(key),
                json.dumps(perms),
                record.tm_create,
                record.tm_expire,
            ),
        )
        return record, key

    @staticmethod
    def _key(row: tuple[str, str, str, float, float | None, float | None]) -> AccessKeyRecord:
        key_id, customer, perms, created, expire, delete = row
        return AccessKeyRecord(
            id=key_id,
            customer_id=customer,
            permissions=tuple(json.loads(perms)),
            tm_create=created,
            tm_expire=expire,
            tm_delete=delete,
        )

    def check_key(self, presented: str, now: float) -> KeyCheck:
        """What the key presented in ``Authorization: AccessKey <key>`` is worth at ``now``.

        The format is checked before any lookup; the lookup is by SHA-256,
        so the time it takes says nothing about stored keys.  A key expires
        at ``tm_expire`` exactly; a revoked key stays revoked.
        """
        if not isinstance(presented, str) or _KEY_RE.fullmatch(presented) is None:
            return KeyCheck(KeyStatus.MALFORMED)
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE key_hash = ?",
            (_key_hash(presented),),
        ).fetchone()
        if row is None:
            return KeyCheck(KeyStatus.UNKNOWN)
        record = self._key(row)
        if record.tm_delete is not None:
            return KeyCheck(KeyStatus.REVOKED, record)
        if record.tm_expire is not None and now >= record.tm_expire:
            return KeyCheck(KeyStatus.EXPIRED, record)
        return KeyCheck(KeyStatus.VALID, record)

    def key(self, key_id: str) -> AccessKeyRecord | None:
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE id = ?", (key_id,)
        ).fetchone()
        return None if row is None else self._key(row)

    def keys(self, include_deleted: bool = False) -> list[AccessKeyRecord]:
        """Keys oldest first; revoked ones only with ``include_deleted``."""
        if include_deleted:
            query = f"SELECT {_KEY_COLUMNS} FROM access_keys ORDER BY tm_create, id"
        else:
            query = (
                f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE tm_delete IS NULL "
                "ORDER BY tm_create, id"
            )
        return [self._key(row) for row in self._db.execute(query).fetchall()]

    def revoke_key(self, key_id: str, now: float) -> bool:
        """Soft-delete the key (sets ``tm_delete``); False if no live key has this id."""
        try:
            canonical = str(uuid.UUID(key_id))
        except (ValueError, TypeError, AttributeError):
            return False
        cursor = self._db.execute(
            "UPDATE access_keys SET tm_delete = ? WHERE id = ? AND tm_delete IS NULL",
            (now, canonical),
        )
        return cursor.rowcount > 0
