"""The skeleton: the C extension builds and imports with OpenSSL 3.

The CLI and the configuration have their own files: ``test_cli.py``, ``test_config.py``.
"""

from __future__ import annotations

from pathlib import Path

# ---------------------------------------------------------------- the C extension


def test_extension_is_the_c_backend() -> None:
    from media import _srtp

    assert _srtp.backend() == "c"
    assert Path(_srtp.__file__ or "").suffix == ".so"


def test_extension_reports_openssl_3() -> None:
    from media import _srtp

    version = _srtp.openssl_version()
    assert version.startswith("OpenSSL 3."), version
    # OpenSSL 3 numbers are 0xMNN00PP0 (major, minor, patch).
    assert _srtp.openssl_version_number() >> 28 == 3
