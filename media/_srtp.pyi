"""Type stub for the C extension ``media._srtp`` (built from ``media/_srtp.c``)."""

def openssl_version() -> str:
    """Version string of the libcrypto loaded at run time."""

def openssl_version_number() -> int:
    """``OpenSSL_version_num()`` of the libcrypto loaded at run time."""

def backend() -> str:
    """Which implementation this is: ``"c"``."""
