"""The ``sipedge`` command line.

Commands: ``run`` and ``check-config`` (the proxy), ``users add|list|remove``
(SIP Digest users), ``keys create|list|revoke`` (trunk access keys) and
``token create`` (a Bearer JWT).  The admin commands find the credential
database and realm in the ``[auth]`` section of ``--config FILE``
(``auth.database``, relative to the working directory, and ``auth.realm``);
``--database`` and ``--realm`` override them or stand in for a config file.

Exit statuses:
  0  success (``run``: stopped by SIGTERM/SIGINT after draining)
  1  ``run``: an internal failure (logged with its traceback);
     ``users remove`` / ``keys revoke``: no such user / live key;
     any admin command: the database failed (locked, corrupt, disk full)
  2  usage or configuration error, or a start-up failure the operator can fix
     (a port in use, an unreadable certificate): one line naming the key;
     an admin command refused its input (a bad UUID, an existing user, a
     missing JWT key)

Configuration errors are one plain line on stderr (a person is reading);
``run`` logs everything else as JSON lines on stdout.

Secrets: a password is read from the terminal (twice) or from stdin with
``--password-stdin``, never from the command line, where every local user
could see it.  Only HA1 hashes are stored.  ``keys create`` prints the new key
once; ``token create`` prints the token; nothing else prints a secret or a
hash.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from edge import __version__, config, tokens
from edge.config_security import AuthConfig
from edge.credentials import (
    AccessKeyRecord,
    CredentialError,
    CredentialStore,
    UserRecord,
    canonical_permissions,
    canonical_uuid,
    check_username,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NOT_FOUND = 1
EXIT_CONFIG = 2
# Enforced here, not in the store: a stolen HA1 can be brute-forced offline,
# and this is where a person chooses the password.
MIN_PASSWORD_LEN = 8

_B64_WARNING = "visible to every local user in the process list: prefer the environment variable"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipedge",
        description="SIP/RTP edge proxy (session border controller).",
        epilog="Every configuration key is documented in docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"sipedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="validate the configuration and run the proxy",
        description=(
            "Validate the configuration, then run the proxy in the foreground, logging JSON "
            "lines on stdout. SIGTERM or SIGINT drains (new calls get 503, live calls may "
            "finish for proxy.drain_grace seconds) and exits 0; SIGHUP reloads the TLS "
            "certificate."
        ),
    )
    _common_arguments(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file and print the effective configuration",
        description=(
            "Validate a configuration file. On success print the effective configuration "
            "(defaults filled in, secrets left out) as JSON and exit 0; on error print one "
            "line naming the key and exit 2."
        ),
    )
    _common_arguments(check)
    check.set_defaults(func=cmd_check_config)

    _users_parser(sub)
    _keys_parser(sub)
    _token_parser(sub)
    return parser


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--tls-cert-base64",
        metavar="B64",
        help=(
            f"TLS certificate chain (PEM) as base64, instead of tls.cert; "
            f"or set {config.ENV_CERT_B64} ({_B64_WARNING})"
        ),
    )
    parser.add_argument(
        "--tls-key-base64",
        metavar="B64",
        help=(
            f"TLS private key (PEM) as base64, instead of tls.key; "
            f"or set {config.ENV_KEY_B64} ({_B64_WARNING})"
        ),
    )


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> config.Config | None:
    try:
        return config.load(
            args.config, env=env, cert_b64=args.tls_cert_base64, key_b64=args.tls_key_base64
        )
    except config.ConfigError as e:
        print(f"sipedge: {args.config}: {e}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    cfg = _load(args, env)
    if cfg is None:
        return EXIT_CONFIG
    print(json.dumps(config.to_dict(cfg), indent=2))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    cfg = _load(args, env)
    if cfg is None:
        return EXIT_CONFIG
    from edge import app  # not imported by check-config: it pulls in the whole proxy

    def reload_config() -> config.Config:
        return config.load(
            args.config, env=env, cert_b64=args.tls_cert_base64, key_b64=args.tls_key_base64
        )

    return app.run(cfg, reload_config=reload_config)


# ---------------------------------------------------------------- admin commands


def _store_arguments(parser: argparse.ArgumentParser, *, realm: bool) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (its [auth] section)"
    )
    parser.add_argument(
        "--database", metavar="PATH", help="credential database, instead of auth.database"
    )
    if realm:
        parser.add_argument("--realm", help="Digest realm, instead of auth.realm")


def _grant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--customer-id", required=True, metavar="UUID", help="the customer this belongs to"
    )
    parser.add_argument(
        "--permission",
        dest="permissions",
        action="append",
        required=True,
        metavar="NAME",
        help="a permission (e.g. call_create); repeat for more",
    )


def _json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON array instead")


def _users_parser(sub: Any) -> None:
    users = sub.add_parser(
        "users",
        help="manage SIP Digest users (the credential database)",
        description="Add, list and remove SIP Digest users. Only HA1 hashes are stored.",
    )
    users_sub = users.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = users_sub.add_parser(
        "add",
        help="add a user",
        description=(
            "Add a user. The password is asked twice on the terminal, or read as one line "
            "from stdin with --password-stdin; it is never taken as an argument."
        ),
    )
    add.add_argument("username")
    _grant_arguments(add)
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password as one line from stdin"
    )
    _store_arguments(add, realm=True)
    add.set_defaults(func=cmd_users_add)

    ls = users_sub.add_parser("list", help="list users (no hashes)")
    _store_arguments(ls, realm=False)
    _json_argument(ls)
    ls.set_defaults(func=cmd_users_list)

    rm = users_sub.add_parser(
        "remove", help="remove a user", description="Remove a user; exit 1 if there is none."
    )
    rm.add_argument("username")
    _store_arguments(rm, realm=True)
    rm.set_defaults(func=cmd_users_remove)


def _keys_parser(sub: Any) -> None:
    keys = sub.add_parser(
        "keys",
        help="manage access keys of server-to-server trunks",
        description=(
            "Create, list and revoke access keys (Authorization: AccessKey ak_...). "
            "Only the SHA-256 of a key is stored; the key is printed once, at creation."
        ),
    )
    keys_sub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = keys_sub.add_parser(
        "create", help="create a key and print it (once)", description="Create an access key."
    )
    _grant_arguments(create)
    create.add_argument(
        "--expires-days", type=float, metavar="N", help="expire after N days (default: never)"
    )
    _store_arguments(create, realm=False)
    create.set_defaults(func=cmd_keys_create)

    ls = keys_sub.add_parser("list", help="list keys (not the keys themselves)")
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    _store_arguments(ls, realm=False)
    _json_argument(ls)
    ls.set_defaults(func=cmd_keys_list)

    revoke = keys_sub.add_parser(
        "revoke", help="revoke a key", description="Revoke a key; exit 1 if no live key has ID."
    )
    revoke.add_argument("key_id", metavar="KEY_ID")
    _store_arguments(revoke, realm=False)
    revoke.set_defaults(func=cmd_keys_revoke)


def _token_parser(sub: Any) -> None:
    token = sub.add_parser(
        "token",
        help="mint Bearer JWTs",
        description="Mint HS256 JWTs for Authorization: Bearer (RFC 8898).",
    )
    token_sub = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = token_sub.add_parser(
        "create",
        help="print a signed token",
        description=(
            f"Print an HS256 token signed with the key in ${tokens.ENV_KEY} (or the variable "
            "auth.jwt_key_env names, with --config)."
        ),
    )
    _grant_arguments(create)
    create.add_argument("--agent-id", metavar="ID", help="the agent the token is for")
    create.add_argument(
        "--lifetime",
        type=float,
        default=tokens.DEFAULT_LIFETIME,
        metavar="SECONDS",
        help=f"how long the token is valid (default {tokens.DEFAULT_LIFETIME:g})",
    )
    create.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (its [auth] section)"
    )
    create.set_defaults(func=cmd_token_create)


def _fail(message: str, status: int = EXIT_CONFIG) -> int:
    print(f"sipedge: {message}", file=sys.stderr)
    return status


def _auth_config(args: argparse.Namespace, env: Mapping[str, str]) -> AuthConfig | None:
    """The [auth] section of --config; None (after saying why) if it does not load."""
    try:
        # Admin commands never open the TLS files.
        cfg = config.load(args.config, env=env, check_files=False)
    except config.ConfigError as e:
        print(f"sipedge: {args.config}: {e}", file=sys.stderr)
        return None
    return cfg.auth


def _store_settings(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[str, str | None] | int:
    """(database path, realm or None), or an exit status after printing why."""
    database: str | None = args.database
    realm: str | None = getattr(args, "realm", None)
    needs_realm = hasattr(args, "realm")
    if args.config is not None:
        auth = _auth_config(args, env)
        if auth is None:
            return EXIT_CONFIG
        database = database or auth.database
        realm = realm or auth.realm
    if database is None:
        return _fail("no credential database: give --config FILE or --database PATH")
    if needs_realm and not realm:
        return _fail("no realm: give --config FILE or --realm REALM")
    return database, realm


def _with_store(
    args: argparse.Namespace,
    env: Mapping[str, str],
    action: Callable[[CredentialStore, str | None], int],
    *,
    create: bool,
) -> int:
    settings = _store_settings(args, env)
    if isinstance(settings, int):
        return settings
    database, realm = settings
    if not create and not os.path.exists(database):
        return _fail(f"no credential database at {database!r}")
    if create:
        parent = os.path.dirname(database)
        if parent and not os.path.isdir(parent):
            # The default (.sipedge/credentials.sqlite3) lives in a private directory.
            try:
                os.makedirs(parent, mode=0o700, exist_ok=True)
            except OSError as e:
                return _fail(f"cannot create directory {parent!r}: {e.strerror}")
    try:
        with CredentialStore(database) as store:
            return action(store, realm)
    except CredentialError as e:
        return _fail(str(e))
    except sqlite3.Error as e:
        return _fail(f"credential database {database!r}: {e}", EXIT_FAILURE)


def _iso(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines)


def _read_password(from_stdin: bool) -> str | int:
    """The new password, or an exit status after printing why not."""
    if from_stdin:
        # One line, as `docker login --password-stdin` reads it.
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
        except (EOFError, KeyboardInterrupt):
            return _fail("no password given")
        if password != again:
            return _fail("the passwords differ")
    if len(password) < MIN_PASSWORD_LEN:
        return _fail(f"the password must be at least {MIN_PASSWORD_LEN} characters")
    return password


def _user_dict(u: UserRecord) -> dict[str, Any]:
    return {
        "username": u.username,
        "realm": u.realm,
        "customer_id": u.customer_id,
        "permissions": list(u.permissions),
        "algorithms": list(u.algorithms),
        "created": _iso(u.tm_create),
    }


def _key_status(k: AccessKeyRecord, now: float) -> str:
    if k.tm_delete is not None:
        return "revoked"
    if k.tm_expire is not None and now >= k.tm_expire:
        return "expired"
    return "valid"


def _key_dict(k: AccessKeyRecord, now: float) -> dict[str, Any]:
    return {
        "id": k.id,
        "customer_id": k.customer_id,
        "permissions": list(k.permissions),
        "created": _iso(k.tm_create),
        "expires": _iso(k.tm_expire),
        "revoked": None if k.tm_delete is None else _iso(k.tm_delete),
        "status": _key_status(k, now),
    }


def cmd_users_add(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        # Checked before the password is asked for, so no one types it twice in vain.
        check_username(args.username)
        customer_id = canonical_uuid(args.customer_id)
        permissions = canonical_permissions(args.permissions)
    except CredentialError as e:
        return _fail(str(e))

    def add(store: CredentialStore, realm: str | None) -> int:
        assert realm is not None
        if store.user(args.username, realm) is not None:
            return _fail(f"user {args.username!r} already exists in realm {realm!r}")
        password = _read_password(args.password_stdin)
        if isinstance(password, int):
            return password
        user = store.add_user(args.username, realm, password, customer_id, permissions)
        print(
            f"added user {user.username!r} in realm {user.realm!r} "
            f"(customer {user.customer_id}; permissions {', '.join(user.permissions)}; "
            f"HA1 for {', '.join(user.algorithms)})"
        )
        return EXIT_OK

    return _with_store(args, env, add, create=True)


def cmd_users_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def ls(store: CredentialStore, _realm: str | None) -> int:
        users = [_user_dict(u) for u in store.users()]
        if args.json:
            print(json.dumps(users, indent=2))
            return EXIT_OK
        header = ("USERNAME", "REALM", "CUSTOMER_ID", "PERMISSIONS", "ALGORITHMS", "CREATED")
        rows = [
            (
                u["username"],
                u["realm"],
                u["customer_id"],
                ",".join(u["permissions"]),
                ",".join(u["algorithms"]),
                u["created"],
            )
            for u in users
        ]
        print(_table(header, rows))
        return EXIT_OK

    return _with_store(args, env, ls, create=False)


def cmd_users_remove(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def rm(store: CredentialStore, realm: str | None) -> int:
        assert realm is not None
        if not store.remove_user(args.username, realm):
            return _fail(f"no user {args.username!r} in realm {realm!r}", EXIT_NOT_FOUND)
        print(f"removed user {args.username!r} from realm {realm!r}")
        return EXIT_OK

    return _with_store(args, env, rm, create=False)


def cmd_keys_create(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    expires_in: float | None = None
    if args.expires_days is not None:
        if not 0 < args.expires_days <= 36500:
            return _fail("--expires-days must be more than 0 and at most 36500")
        expires_in = args.expires_days * 86400.0
    try:
        # Checked before the database is created for a request that will fail.
        customer_id = canonical_uuid(args.customer_id)
        permissions = canonical_permissions(args.permissions)
    except CredentialError as e:
        return _fail(str(e))

    def create(store: CredentialStore, _realm: str | None) -> int:
        record, key = store.create_key(customer_id, permissions, expires_in, now=time.time())
        print(f"id:          {record.id}")
        print(f"key:         {key}")
        print(f"customer_id: {record.customer_id}")
        print(f"permissions: {', '.join(record.permissions)}")
        print(f"expires:     {_iso(record.tm_expire)}")
        print(
            "sipedge: the key is shown only this once; only its hash is stored. "
            "Revoke it with `sipedge keys revoke ID` if it is lost.",
            file=sys.stderr,
        )
        return EXIT_OK

    return _with_store(args, env, create, create=True)


def cmd_keys_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def ls(store: CredentialStore, _realm: str | None) -> int:
        now = time.time()
        keys = [_key_dict(k, now) for k in store.keys(include_deleted=args.all)]
        if args.json:
            print(json.dumps(keys, indent=2))
            return EXIT_OK
        header = ("ID", "CUSTOMER_ID", "PERMISSIONS", "CREATED", "EXPIRES", "STATUS")
        rows = [
            (
                k["id"],
                k["customer_id"],
                ",".join(k["permissions"]),
                k["created"],
                k["expires"],
                k["status"],
            )
            for k in keys
        ]
        print(_table(header, rows))
        return EXIT_OK

    return _with_store(args, env, ls, create=False)


def cmd_keys_revoke(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def revoke(store: CredentialStore, _realm: str | None) -> int:
        if not store.revoke_key(args.key_id, now=time.time()):
            return _fail(f"no live key with id {args.key_id!r}", EXIT_NOT_FOUND)
        print(f"revoked key {args.key_id}")
        return EXIT_OK

    return _with_store(args, env, revoke, create=False)


def cmd_token_create(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    key_env = tokens.ENV_KEY
    max_lifetime = AuthConfig().jwt_max_lifetime
    if args.config is not None:
        auth = _auth_config(args, env)
        if auth is None:
            return EXIT_CONFIG
        key_env, max_lifetime = auth.jwt_key_env, auth.jwt_max_lifetime
    try:
        key = tokens.key_from_env(env, key_env)
    except ValueError as e:
        return _fail(str(e))
    if not 1 <= args.lifetime <= max_lifetime:
        # The proxy would refuse a longer-lived token (auth.jwt_max_lifetime).
        return _fail(f"--lifetime must be between 1 and {max_lifetime:g} seconds")
    try:
        customer_id = canonical_uuid(args.customer_id)
        permissions = canonical_permissions(args.permissions)
        token = tokens.mint_jwt(
            key, customer_id, permissions, agent_id=args.agent_id, lifetime=args.lifetime
        )
    except (CredentialError, ValueError) as e:
        return _fail(str(e))
    print(token)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    status: int = args.func(args, os.environ if env is None else env)
    return status


if __name__ == "__main__":
    sys.exit(main())
