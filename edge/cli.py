"""The ``sipedge`` command line.

Commands: ``run`` and ``check-config`` (the proxy), ``users add|list|remove``
(SIP Digest users), ``keys create|list|revoke`` (trunk access keys),
``token create`` (a Bearer JWT), and ``bans list|remove``, ``calls [show]`` and
``reload``, which ask the running process over its control socket
(``[control] path`` of ``--config FILE``, or ``--socket PATH``).

The admin commands find the credential database and realm in the ``[auth]``
section of ``--config FILE`` (``auth.database``, relative to the working
directory, and ``auth.realm``); ``--database`` and ``--realm`` override them or
stand in for a config file.

Exit statuses:
  0  success (``run``: stopped by SIGTERM/SIGINT after draining)
  1  ``run``: an internal failure (logged with its traceback);
     ``bans``/``calls``/``reload``: sipedge is not running or answered with
     an error (no such ban, no such call);
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
import ipaddress
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from edge import __version__, config, control, tokens
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
    _control_parsers(sub)
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


# ---------------------------------------------------------------- control commands
# These ask the running process over its control socket (edge/control.py).


def _control_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (its [control] path)"
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the control socket, instead of control.path (default {control.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the answer (default 5)",
    )


def _numbers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--show-numbers",
        action="store_true",
        help="print telephone numbers in full (masked by default, e.g. +1555***4567)",
    )


def _control_parsers(sub: Any) -> None:
    bans = sub.add_parser(
        "bans",
        help="list and lift the running process's bans",
        description=(
            "List the addresses the running sipedge bans (flood, failed authentication) "
            "and lift a ban. Asks the process over its control socket."
        ),
    )
    bans_sub = bans.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = bans_sub.add_parser(
        "list",
        help="list live bans",
        description=(
            "List live bans: address, reason, since and until (UTC), the seconds "
            "remaining and the packets dropped while banned."
        ),
    )
    _control_arguments(ls)
    _json_argument(ls)
    ls.set_defaults(func=cmd_bans_list)
    rm = bans_sub.add_parser(
        "remove", help="lift a ban", description="Lift the ban on ADDRESS; exit 1 if there is none."
    )
    rm.add_argument("address", metavar="ADDRESS", help="an IPv4 or IPv6 address")
    _control_arguments(rm)
    rm.set_defaults(func=cmd_bans_remove)

    calls = sub.add_parser(
        "calls",
        help="list the running process's live calls",
        description=(
            "List live calls: Call-ID, parties (numbers masked unless --show-numbers), "
            "state, age, transports, media profiles, packets relayed each way and drops. "
            "`calls show CALL-ID` prints one call in full. Asks the process over its "
            "control socket."
        ),
    )
    _control_arguments(calls)
    _json_argument(calls)
    _numbers_argument(calls)
    calls.set_defaults(func=cmd_calls_list)
    calls_sub = calls.add_subparsers(dest="action", metavar="ACTION")
    calls_ls = calls_sub.add_parser("list", help="list live calls (the default)")
    _control_arguments(calls_ls)
    _json_argument(calls_ls)
    _numbers_argument(calls_ls)
    calls_ls.set_defaults(func=cmd_calls_list)
    show = calls_sub.add_parser(
        "show", help="print one call in full", description="Print one live call; exit 1 if none."
    )
    show.add_argument("call_id", metavar="CALL-ID")
    _control_arguments(show)
    show.add_argument("--json", action="store_true", help="print a JSON object instead")
    _numbers_argument(show)
    show.set_defaults(func=cmd_calls_show)

    reload = sub.add_parser(
        "reload",
        help="make the running process re-read what it can without a restart",
        description=(
            "Ask the running sipedge to reload (the TLS certificate, the trunk "
            "allowlists: what SIGHUP reloads) and print what it reloaded."
        ),
    )
    _control_arguments(reload)
    reload.set_defaults(func=cmd_reload)


def _socket_path(args: argparse.Namespace, env: Mapping[str, str]) -> str | int:
    """The control socket to ask, or an exit status after printing why not."""
    if args.socket:
        return str(args.socket)
    if args.config is None:
        return control.DEFAULT_PATH
    try:
        # Only the path is needed: the TLS files are not opened.
        cfg = config.load(args.config, env=env, check_files=False)
    except config.ConfigError as e:
        print(f"sipedge: {args.config}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return control.default_path(cfg)


def _ask(
    args: argparse.Namespace, env: Mapping[str, str], command: str, **fields: Any
) -> tuple[int, Any]:
    """(EXIT_OK, the process's answer to ``command``), or (an exit status, None)
    after printing why not."""
    path = _socket_path(args, env)
    if isinstance(path, int):
        return path, None
    if not 0 < args.timeout <= 3600:
        return _fail("--timeout must be more than 0 and at most 3600 seconds"), None
    try:
        return EXIT_OK, control.request(path, command, timeout=args.timeout, **fields)
    except control.ControlError as e:
        return _fail(str(e), EXIT_FAILURE), None


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _iso_or_dash(value: Any) -> str:
    t = _seconds(value)
    return "-" if t is None else _iso(t)


def _duration(seconds: float | None) -> str:
    """``3723`` -> ``1h02m03s``: an age a person reads at a glance."""
    if seconds is None:
        return "?"
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _ban_dict(ban: Mapping[str, Any], now: float) -> dict[str, Any]:
    until = _seconds(ban.get("until"))
    return {
        "address": str(ban.get("address", "?")),
        "reason": str(ban.get("reason", "")),
        "since": _iso_or_dash(ban.get("since")),
        "until": _iso_or_dash(until),
        "remaining": None if until is None else max(0, math.ceil(until - now)),
        "dropped": ban.get("hits", 0),
    }


def cmd_bans_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    status, result = _ask(args, env, "bans.list")
    if status != EXIT_OK:
        return status
    if not isinstance(result, list):
        return _fail("unexpected answer to bans.list", EXIT_FAILURE)
    now = time.time()
    bans = [_ban_dict(b, now) for b in result if isinstance(b, dict)]
    if args.json:
        print(json.dumps(bans, indent=2))
        return EXIT_OK
    header = ("ADDRESS", "REASON", "SINCE", "UNTIL", "REMAINING", "DROPPED")
    rows = [
        (
            b["address"],
            b["reason"],
            b["since"],
            b["until"],
            "?" if b["remaining"] is None else f"{b['remaining']}s",
            str(b["dropped"]),
        )
        for b in bans
    ]
    print(_table(header, rows))
    return EXIT_OK


def cmd_bans_remove(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        address = _canonical_address(args.address)
    except ValueError:
        return _fail(f"not an IP address: {args.address!r}")
    status, result = _ask(args, env, "bans.remove", address=address)
    if status != EXIT_OK:
        return status
    if not isinstance(result, dict) or not result.get("removed"):
        return _fail(f"no ban on {address}", EXIT_NOT_FOUND)
    print(f"removed the ban on {address}")
    return EXIT_OK


def _canonical_address(text: str) -> str:
    """The address as the proxy keys its bans: as the socket API writes it."""
    ip = ipaddress.ip_address(text.strip())
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # The kernel writes ::ffff:a.b.c.d; str() of Python 3.11 writes hex words.
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _masked(call: Mapping[str, Any], show_numbers: bool) -> dict[str, Any]:
    """The call with its URIs (every ``*_uri`` field) masked unless asked not to."""
    out = dict(call)
    if not show_numbers:
        for key, value in out.items():
            if key.endswith("_uri") and isinstance(value, str):
                out[key] = control.mask_uri(value)
    return out


def _legs(media: Any) -> list[tuple[str, dict[str, Any]]]:
    """(side, leg) of every stream of a call's media info."""
    if not isinstance(media, dict) or not isinstance(media.get("streams"), list):
        return []
    legs: list[tuple[str, dict[str, Any]]] = []
    for stream in media["streams"]:
        by_side = stream.get("legs") if isinstance(stream, dict) else None
        if isinstance(by_side, dict):
            legs.extend((str(s), leg) for s, leg in by_side.items() if isinstance(leg, dict))
    return legs


def _profile(leg: Mapping[str, Any]) -> str:
    """rtp, sdes or dtls: how a leg's media is carried (RFC 5763's UDP/TLS/... is DTLS)."""
    proto = str(leg.get("proto") or "").upper()
    if "TLS" in proto:
        return "dtls"
    if leg.get("srtp") or "SAVP" in proto:
        return "sdes"
    return "rtp"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _drops(leg: Mapping[str, Any]) -> int:
    drops = leg.get("drops")
    return sum(_count(n) for n in drops.values()) if isinstance(drops, dict) else 0


def _media_summary(media: Any) -> tuple[str, str, str, str]:
    """(profiles, packets from the caller, from the callee, drops) for the list."""
    if media is None:
        return "-", "-", "-", "-"
    if isinstance(media, dict) and media.get("passthrough"):
        return "passthrough", "-", "-", "-"
    legs = _legs(media)
    if not legs:
        return "?", "-", "-", "-"
    profiles: dict[str, str] = {}
    packets = {"caller": 0, "callee": 0}
    for side, leg in legs:
        profiles.setdefault(side, _profile(leg))
        if side in packets:
            # packets_in: accepted from this leg's endpoint and relayed to the other.
            packets[side] += _count(leg.get("packets_in"))
    profile = "/".join(profiles.get(s, "-") for s in ("caller", "callee"))
    drops = sum(_drops(leg) for _, leg in legs)
    return profile, str(packets["caller"]), str(packets["callee"]), str(drops)


def cmd_calls_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    status, result = _ask(args, env, "calls.list")
    if status != EXIT_OK:
        return status
    if not isinstance(result, list):
        return _fail("unexpected answer to calls.list", EXIT_FAILURE)
    calls = [_masked(c, args.show_numbers) for c in result if isinstance(c, dict)]
    if args.json:
        print(json.dumps(calls, indent=2))
        return EXIT_OK
    now = time.time()
    header = (
        "CALL-ID",
        "FROM",
        "TO",
        "STATE",
        "AGE",
        "CALLER",
        "CALLEE",
        "MEDIA",
        "PKTS_FROM_CALLER",
        "PKTS_FROM_CALLEE",
        "DROPS",
    )
    rows = []
    for c in calls:
        created = _seconds(c.get("created"))
        rows.append(
            (
                str(c.get("call_id", "?")),
                str(c.get("from_uri", "")),
                str(c.get("to_uri", "")),
                str(c.get("state", "?")),
                _duration(None if created is None else now - created),
                str(c.get("caller", "")),
                str(c.get("callee", "")),
                *_media_summary(c.get("media")),
            )
        )
    print(_table(header, rows))
    return EXIT_OK


_SHOW_FIRST = ("call_id", "from_uri", "to_uri", "state", "created", "answered", "caller", "callee")
_TIMES = frozenset({"created", "answered", "ended"})


def _show_value(key: str, value: Any, now: float) -> str:
    if key in _TIMES:
        t = _seconds(value)
        if t is None:
            return "-"
        return f"{_iso(t)} ({_duration(now - t)} ago)"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _leg_line(side: str, leg: Mapping[str, Any]) -> str:
    drops = leg.get("drops")
    nonzero = {str(k): v for k, v in drops.items() if _count(v)} if isinstance(drops, dict) else {}
    parts = [
        f"{side}: {_profile(leg)} {leg.get('proto') or '?'}",
        f"local {leg.get('local') or '-'}",
        f"remote {leg.get('remote') or '-'}",
        f"in {_count(leg.get('packets_in'))} pkts/{_count(leg.get('bytes_in'))} B",
        f"out {_count(leg.get('packets_out'))} pkts/{_count(leg.get('bytes_out'))} B",
        "drops " + (", ".join(f"{k} {v}" for k, v in sorted(nonzero.items())) or "0"),
    ]
    if leg.get("hold"):
        parts.append("on hold")
    return ", ".join(parts)


def cmd_calls_show(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    status, result = _ask(args, env, "calls.show", call_id=args.call_id)
    if status != EXIT_OK:
        return status
    if not isinstance(result, dict):
        return _fail("unexpected answer to calls.show", EXIT_FAILURE)
    call = _masked(result, args.show_numbers)
    if args.json:
        print(json.dumps(call, indent=2))
        return EXIT_OK
    now = time.time()
    media = call.pop("media", None)
    keys = [k for k in _SHOW_FIRST if k in call] + sorted(k for k in call if k not in _SHOW_FIRST)
    width = max((len(k) for k in keys), default=0) + 1
    for key in keys:
        print(f"{key + ':':<{width}} {_show_value(key, call[key], now)}")
    if media is None:
        print(f"{'media:':<{width}} -")
    elif isinstance(media, dict) and media.get("passthrough"):
        print(f"{'media:':<{width}} passthrough (not relayed)")
    elif isinstance(media, dict) and isinstance(media.get("streams"), list):
        print("media:")
        for stream in media["streams"]:
            if not isinstance(stream, dict):
                continue
            state = "active" if stream.get("active", True) else "inactive"
            if stream.get("on_hold"):
                state += ", on hold"
            print(f"  stream {stream.get('index', '?')} {stream.get('media', '?')} ({state})")
            legs = stream.get("legs")
            if isinstance(legs, dict):
                for side, leg in legs.items():
                    if isinstance(leg, dict):
                        print(f"    {_leg_line(str(side), leg)}")
    else:
        print(f"{'media:':<{width}} {json.dumps(media)}")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    status, result = _ask(args, env, "reload")
    if status != EXIT_OK:
        return status
    names = result.get("reloaded") if isinstance(result, dict) else None
    if not isinstance(names, list):
        return _fail("unexpected answer to reload", EXIT_FAILURE)
    if names:
        print(f"reloaded: {', '.join(str(n) for n in names)}")
    else:
        print("reloaded nothing")
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
