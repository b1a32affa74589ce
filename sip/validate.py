"""What a proxy must refuse in a request that parsed (RFC 3261 §16.3).

:func:`check_proxy_request` raises :class:`~sip.errors.SipError` carrying the
answer: 416 for a Request-URI scheme the proxy cannot route (§16.3 item 2,
RFC 4475 §3.3.2), 483 when Max-Forwards is exhausted (§16.3 item 3,
RFC 4475 §3.3.11), 420 with ``Unsupported`` for an unknown Proxy-Require
option (§16.3 item 5, RFC 4475 §3.3.5).  Syntax errors, missing or repeated
mandatory headers and a CSeq method that does not match were already refused
with 400 by :func:`sip.message.parse_message`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from sip.errors import SipError
from sip.message import Request

ROUTABLE_SCHEMES: Final = frozenset({"sip", "sips", "tel"})


def check_proxy_request(
    request: Request,
    *,
    supported_extensions: Collection[str] = (),
    answer_options_locally: bool = True,
) -> None:
    """Refuse what a proxy must not forward.

    ``answer_options_locally``: an OPTIONS with Max-Forwards 0 is addressed to
    the proxy itself (§16.3 item 3 allows answering it), so it is not a 483.
    """
    if request.uri.scheme not in ROUTABLE_SCHEMES:
        raise SipError("unsupported Request-URI scheme", 416)
    max_forwards = request.max_forwards
    if max_forwards == 0 and not (answer_options_locally and request.method == "OPTIONS"):
        raise SipError("Max-Forwards exhausted", 483)
    if "proxy-require" in request.headers:
        known = {ext.lower() for ext in supported_extensions}
        unsupported = [tag for tag in request.proxy_require if tag.lower() not in known]
        if unsupported:
            raise SipError(
                "unsupported Proxy-Require extension",
                420,
                (("Unsupported", ", ".join(unsupported)),),
            )
