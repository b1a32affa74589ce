"""sipedge's media plane: RTP/SRTP relay, its C core (``media._srtp``) and Python twin.

Protocol parts take bytes and a clock and do no I/O; only the socket glue
imports asyncio.  Nothing here imports ``edge``.
"""
