"""The network record: everything the relay needs to know of one phone network, in one line of a table.

Each network module (``phones.twilio``, ``phones.plivo``) ends with its ``NETWORK``; ``NETWORKS`` in
``phones.networks`` lists them, and the app serves each one's voice webhook and media stream from the
same two handlers (``routes.calls``). Adding a network is one new module and one line in that table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from config import Config
    from phones.websocket import Dialect


class Signatures(Protocol):
    """A network's request signatures, checked with its own SDK.

    One meaning of off for every network: without the network's credentials (``enabled`` False) the
    checks pass everything, and the network is served at all only with ``ALLOW_UNSIGNED_WEBHOOKS``.
    """

    @property
    def enabled(self) -> bool:
        """The network's credentials are set: requests must be signed."""
        ...

    def webhook(self, method: str, url: str, params: Mapping[str, str], headers: Mapping[str, str],
                body: bytes = b"") -> bool:
        """A webhook's signature matches its ``method``, full ``url`` and form ``params`` (or its raw ``body``,
        for a network that signs the bytes: Telnyx)."""
        ...

    def handshake(self, https_url: str, wss_url: str, headers: Mapping[str, str]) -> bool:
        """A media websocket's handshake is signed (over whichever form of its URL the network signs)."""
        ...


@dataclass(frozen=True, slots=True)
class Network:
    """One phone network, as the app serves it."""

    name: str
    """In logs, end reasons and metrics (``twilio``)."""
    answer_path: str
    """The voice webhook (GET or POST): answered with a greeting and a stream, or a refusal."""
    stream_path: str
    """The media websocket the answer points the network at."""
    dialect: Dialect
    """The media stream's messages, for ``phones.websocket.WebSocketLeg``."""
    stream_answer: Callable[[str, str, Mapping[str, str]], str]
    """``(say, stream_url, parameters)`` to the webhook answer that greets and connects the stream,
    attaching ``parameters`` (caller number, stream token) to it."""
    hang_up_answer: Callable[[str], str]
    """``say`` to the webhook answer that says it and hangs up."""
    content_type: str
    """The webhook answer's content type."""
    call_id_param: str
    """The webhook parameter naming the call (``CallSid``)."""
    caller_number: Callable[[str | None], str | None]
    """The webhook's ``From`` made readable by ``callers.find_caller`` (E.164 with its ``+``)."""
    signatures: Callable[[Config], Signatures]
    """The network's signature checks for a configuration. Without the credentials the routes answer 404,
    unless ``ALLOW_UNSIGNED_WEBHOOKS`` serves them unchecked (local tests)."""
    carries_call_id: bool = False
    """The stream's parameters carry the webhook's call id (``call_id``), and the stream's start reports it as
    its call id: for a network whose stream may name the call otherwise than its webhook did (Telnyx)."""
