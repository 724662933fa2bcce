# -*- test-case-name: tests.mqtt.test_codec -*-
"""
MQTT 3.1.1 (protocol level 4) and MQTT 5 (level 5) packets as values, without I/O.

L{encode} turns a packet into bytes; a L{Decoder} turns a byte stream back into
packets. Only the packets a publishing client and a broker exchange are supported:
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK and AUTH are rejected.

The package's modules each hold one part: L{packets} the values, L{fields} the
primitive fields, L{properties} the MQTT 5 property table, L{encoding} and
L{decoding} the two directions. This module is their public interface.
"""

from gateway.mqtt.codec import packets
from gateway.mqtt.codec.decoding import Decoder
from gateway.mqtt.codec.encoding import (
    as_duplicate,
    encode,
    encode_message,
    message_properties,
)
from gateway.mqtt.codec.packets import *  # noqa: F403 (the packet values, all public)

__all__ = ["Decoder", "as_duplicate", "encode", "encode_message", "message_properties"]
__all__ += packets.__all__
