"""Build of the C extension ``media._srtp``; all other metadata is in pyproject.toml.

setuptools still needs a setup.py to declare an extension with per-extension
flags.  The module links OpenSSL's libcrypto, so building it needs a C compiler
and the OpenSSL headers (Debian: gcc, libssl-dev; see scripts/debian-deps.sh).

SIPEDGE_STRICT_BUILD=1 (set by the Makefile) turns compiler warnings into
errors, so the project's own builds stay warning-free without breaking a
user's build on a newer compiler that invents a new warning.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

extra_compile_args = ["-O2", "-Wall", "-Wextra"]
if os.environ.get("SIPEDGE_STRICT_BUILD") == "1":
    extra_compile_args.append("-Werror")

setup(
    ext_modules=[
        Extension(
            "media._srtp",
            # One extension: the SRTP core, its Python binding and the fast path's
            # data plane (issue 7) share one shared object and call each other directly.
            sources=[
                "media/_srtp.c",
                "media/srtp_core.c",
                "media/fastpath.c",
                "media/fastpath_py.c",
                # The SIP tokenizer (sip/message.py's accelerator) rides along: one
                # extension to build, ship and fuzz.
                "media/sipscan.c",
                # ... and so do the fast paths of its typed header values.
                "media/sipvalues.c",
                # ... and the header checks around them (sip.message._check_headers).
                "media/sipcheck.c",
            ],
            depends=[
                "media/srtp_core.h",
                "media/fastpath.h",
                "media/fastpath_py.h",
                "media/sipscan.h",
                "media/sipvalues.h",
                "media/sipcheck.h",
            ],
            libraries=["crypto"],
            extra_compile_args=extra_compile_args,
        )
    ]
)
