"""The phone networks the relay serves: one line per network (``phones.network.Network``)."""

from __future__ import annotations

from phones import plivo, telnyx, twilio
from phones.network import Network

NETWORKS: tuple[Network, ...] = (twilio.NETWORK, plivo.NETWORK, telnyx.NETWORK)
"""Served in this order; the first is the one a bare ``/`` websocket upgrade reaches."""
