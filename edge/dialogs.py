"""The dialog table: every live call the edge knows (RFC 3261 §12).

The proxy Record-Routes, so it sees every request of a dialog; this table is
what it knows about the calls themselves: who, since when, in which state, on
which transports.  It feeds ``sipedge calls``, the metrics, draining on
SIGTERM and (with the media relay) ending a call's media when its dialog ends.
Entries are created on the INVITE, confirmed by a 2xx, and removed by a BYE,
a failed INVITE, or the maximum call age.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class DialogState(enum.Enum):
    EARLY = "early"  # INVITE forwarded, no 2xx yet
    CONFIRMED = "confirmed"  # 2xx seen
    TERMINATED = "terminated"


@dataclass(slots=True, init=False)
class Dialog:
    call_id: str
    from_tag: str
    to_tag: str | None
    caller: str  # source, e.g. "udp:127.0.0.1:5070"
    callee: str  # next hop, e.g. "udp:127.0.0.2:5080"
    from_uri: str
    to_uri: str
    created: float
    state: DialogState = DialogState.EARLY
    answered: float | None = None
    ended: float | None = None
    end_reason: str = ""
    # Where each party is reached (transport Destinations), for in-dialog
    # requests from UAs that ignore the route set (sipp's built-in uac does).
    caller_hop: Any = None
    callee_hop: Any = None
    extra: dict[str, str] = field(default_factory=dict)

    # Written out: mypyc compiles it, the generated one would run interpreted.
    def __init__(
        self,
        call_id: str,
        from_tag: str,
        to_tag: str | None,
        caller: str,
        callee: str,
        from_uri: str,
        to_uri: str,
        created: float,
        state: DialogState = DialogState.EARLY,
        answered: float | None = None,
        ended: float | None = None,
        end_reason: str = "",
        caller_hop: Any = None,
        callee_hop: Any = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.call_id = call_id
        self.from_tag = from_tag
        self.to_tag = to_tag
        self.caller = caller
        self.callee = callee
        self.from_uri = from_uri
        self.to_uri = to_uri
        self.created = created
        self.state = state
        self.answered = answered
        self.ended = ended
        self.end_reason = end_reason
        self.caller_hop = caller_hop
        self.callee_hop = callee_hop
        self.extra = {} if extra is None else extra

    def hop_for(self, from_tag: str | None) -> Any:
        """Where a request of this dialog goes: to the other party than its sender."""
        return self.callee_hop if from_tag == self.from_tag else self.caller_hop


class DialogTable:
    """Dialogs by Call-ID and From tag (a call's identity before the To tag exists).

    Forked early dialogs of one INVITE share the entry: the edge sends each
    INVITE to one target at a time, so one Call-ID/From-tag is one call.
    """

    def __init__(self, max_age: float = 12 * 3600.0) -> None:
        self.max_age = max_age
        self._dialogs: dict[tuple[str, str], Dialog] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._dialogs.values()))

    def get(self, call_id: str, from_tag: str | None, to_tag: str | None = None) -> Dialog | None:
        """The dialog of a request or response, in either direction."""
        dialog = self._dialogs.get((call_id, from_tag or ""))
        if dialog is None and to_tag is not None:
            # A request from the callee carries the tags swapped (§12.2.1.1).
            dialog = self._dialogs.get((call_id, to_tag))
        return dialog

    def early(
        self,
        *,
        call_id: str,
        from_tag: str,
        caller: str,
        callee: str,
        from_uri: str,
        to_uri: str,
        now: float,
    ) -> Dialog:
        key = (call_id, from_tag)
        dialog = self._dialogs.get(key)
        if dialog is None:
            dialog = Dialog(call_id, from_tag, None, caller, callee, from_uri, to_uri, now)
            self._dialogs[key] = dialog
        else:
            dialog.callee = callee
        return dialog

    def confirm(self, dialog: Dialog, to_tag: str | None, now: float) -> None:
        if dialog.state is DialogState.EARLY:
            dialog.state = DialogState.CONFIRMED
            dialog.answered = now
            dialog.to_tag = to_tag

    def end(self, dialog: Dialog, now: float, reason: str) -> None:
        dialog.state = DialogState.TERMINATED
        dialog.ended = now
        dialog.end_reason = reason
        # in and del: compiled, native; pop with a default is a generic method call.
        key = (dialog.call_id, dialog.from_tag)
        if key in self._dialogs:
            del self._dialogs[key]

    def expire(self, now: float) -> list[Dialog]:
        """End and return the dialogs older than ``max_age`` (no BYE ever came)."""
        old = [d for d in self._dialogs.values() if now - d.created > self.max_age]
        for dialog in old:
            self.end(dialog, now, "max-age")
        return old
