"""The ``sipedge`` command line.

Exit statuses:
  0  success
  2  usage or configuration error (one line on stderr naming the key)
  3  ``run``: the configuration is valid but the proxy is not built yet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from edge import __version__, config

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_NOT_BUILT = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipedge",
        description="SIP/RTP edge proxy (session border controller).",
    )
    parser.add_argument("--version", action="version", version=f"sipedge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="validate the configuration and run the proxy",
        description="Validate the configuration, then run the proxy in the foreground.",
    )
    run.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file and print the effective configuration",
        description=(
            "Validate a configuration file. On success print the effective configuration "
            "(defaults filled in) as JSON and exit 0; on error print one line naming the "
            "key and exit 2."
        ),
    )
    check.add_argument("--config", required=True, metavar="FILE", help="TOML configuration file")
    check.set_defaults(func=cmd_check_config)
    return parser


def _load(path: str) -> config.Config | None:
    try:
        return config.load(path)
    except config.ConfigError as e:
        print(f"sipedge: {path}: {e}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    print(json.dumps(config.to_dict(cfg), indent=2))
    return EXIT_OK


def log(level: str, event: str, **fields: Any) -> None:
    """One JSON object per line on stderr (the proxy's log format)."""
    record = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
        "level": level,
        "event": event,
        **fields,
    }
    print(json.dumps(record), file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    log(
        "error",
        "proxy_not_built",
        msg="configuration is valid, but the SIP proxy is not built yet "
        "(it lands with the edge issue); exiting",
        config=args.config,
        version=__version__,
    )
    return EXIT_NOT_BUILT


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
