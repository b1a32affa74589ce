"""The ``sipedge`` command line.

Exit statuses:
  0  success (``run``: stopped by SIGTERM/SIGINT after draining)
  1  ``run``: an internal failure (logged with its traceback)
  2  usage or configuration error, or a start-up failure the operator can fix
     (a port in use, an unreadable certificate): one line naming the key

Configuration errors are one plain line on stderr (a person is reading);
``run`` logs everything else as JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

from edge import __version__, config

EXIT_OK = 0
EXIT_CONFIG = 2

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

    return app.run(cfg)


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
