"""
mqtt-http-gateway: publish MQTT messages with one HTTP request.

The daemon is assembled by L{gateway.tap.makeService} and run by twistd through the
C{mqtt-http-gateway} plugin.
"""

__version__ = "0.1.0"
