"""
The twistd plugin: C{twistd -n mqtt-http-gateway --config gateway.toml}.
"""

from twisted.application.service import ServiceMaker

mqttHttpGateway = ServiceMaker(
    "mqtt-http-gateway",
    "gateway.tap",
    "Publish MQTT messages with one HTTP request.",
    "mqtt-http-gateway",
)
