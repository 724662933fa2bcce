"""
Tests for L{gateway.config}: the documented TOML keys, their defaults, and
errors that name the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import MutableMapping
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.config import (
    AdminConfig,
    AliyunConfig,
    AuthConfig,
    BrokerAddress,
    Config,
    ConfigError,
    HTTPConfig,
    LimitsConfig,
    LogConfig,
    MQTTConfig,
    TLSConfig,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "conf", "gateway.toml")
BASE = os.path.abspath(os.sep + os.path.join("etc", "gw"))

# The documented configuration block, verbatim: the contract for key names and defaults.
CONTRACT_BLOCK = """
[server]
workers = 1                                  # worker processes serving the listeners;
                                             # "auto" = one per CPU
[http]
listen = ["tcp:8080:interface=127.0.0.1"]   # any Twisted server endpoint strings
max_body = 262144                            # bytes; larger -> 413
idle_timeout = 60                            # seconds an idle keep-alive connection lives
max_connections_per_source = 256             # open connections per client address
max_batch = 1000                             # messages in one /api/v5/publish/bulk
[tls]
listen = []                                  # endpoint strings served as HTTPS with the
                                             # settings below (tcp:, systemd:, ...)
cert = "server.crt"                          # PEM; may hold the chain
key = "server.key"
client_ca = "ca.crt"                         # trust anchor(s) for device certificates
client_cert = "optional"                     # "none" | "optional" | "required"
crl = "revoked.crl"                          # optional; revoked device certs are refused
[mqtt]
brokers = ["mqtt://127.0.0.1:1883"]          # mqtt:// or mqtts://; tried in order
protocol = "auto"                            # "5" | "3.1.1" | "auto": 5, and 3.1.1 when the
                                             # broker refuses 5, closes, or stays silent
client_id = "mqtt-http-gateway-{hostname}-{worker}"  # the gateway's own session(s);
                                             # unique per process: {hostname} {worker} {pid}
username = ""                                # the gateway's own broker credentials
password = ""
ca = ""                                      # for mqtts:// (server name is verified)
cert = ""
key = ""
keepalive = 60
publish_timeout = 10                         # seconds to wait for the broker's ack
[auth]
mode = "gateway"                             # "gateway" | "broker"  (section 6)
password_file = ""                           # mosquitto_passwd format
acl_file = ""                                # mosquitto acl_file format
allow_anonymous = false
[limits]
rate = 1000                                  # messages/s for the whole gateway (0 = off)
burst = 1000
client_rate = 0                              # per client id (0 = off)
client_burst = 0
[aliyun]                                     # section 5; off unless instance_id is set
instance_id = ""
access_keys = { }                            # AccessKeyId = "AccessKeySecret"
payload_encoding = "raw"                     # "raw" | "base64" (decode Payload)
[cluster]                                    # off while redis is ""
redis = ""
on_redis_error = "open"
[admin]
listen = ""                                  # e.g. "tcp:9100:interface=127.0.0.1"
[log]
access = "-"                                 # "-" stdout, a path, or "" for none; JSON lines
"""  # noqa: E501


def keys_of(document: dict[str, Any]) -> set[str]:
    """Every C{section.key} of a decoded document (tables inside keys not opened)."""
    return {f"{section}.{key}" for section, table in document.items() for key in table}


CONTRACT_KEYS = keys_of(tomllib.loads(CONTRACT_BLOCK))


def error(document: dict[str, Any], base_dir: str = BASE) -> str:
    """The one-line message L{config.parse} refuses C{document} with."""
    try:
        config.parse(document, base_dir)
    except ConfigError as e:
        message = str(e)
    else:
        raise AssertionError(f"{document!r} was accepted")
    assert "\n" not in message, message
    return message


def write(directory: str, name: str, content: bytes) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


class DefaultsTests(SynchronousTestCase):
    """With no file, or an empty one, every key has its default."""

    def test_pinned(self) -> None:
        """Each default is the value the documented block shows."""
        c = config.default()
        self.assertEqual(
            c.http,
            HTTPConfig(
                listen=("tcp:8080:interface=127.0.0.1",),
                max_body=262144,
                idle_timeout=60.0,
                max_connections_per_source=256,
                max_batch=1000,
            ),
        )
        self.assertEqual(
            c.tls,
            TLSConfig(
                listen=(),
                cert=None,
                key=None,
                client_ca=None,
                client_cert="optional",
                crl=None,
            ),
        )
        broker = BrokerAddress("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False)
        self.assertEqual(
            c.mqtt,
            MQTTConfig(
                brokers=(broker,),
                brokers_configured=False,
                protocol="auto",
                client_id="mqtt-http-gateway-{hostname}-{worker}",
                username="",
                password="",
                ca=None,
                cert=None,
                key=None,
                keepalive=60,
                publish_timeout=10.0,
            ),
        )
        self.assertEqual(
            c.auth,
            AuthConfig(
                mode="gateway",
                password_file=None,
                acl_file=None,
                allow_anonymous=False,
            ),
        )
        self.assertEqual(
            c.limits,
            LimitsConfig(rate=1000.0, burst=1000, client_rate=0.0, client_burst=0),
        )
        self.assertEqual(
            c.aliyun,
            AliyunConfig(instance_id="", access_keys={}, payload_encoding="raw"),
        )
        self.assertFalse(c.aliyun.enabled)
        self.assertEqual(c.admin, AdminConfig(listen=""))
        self.assertEqual(c.log, LogConfig(access="-"))
        self.assertIsNone(c.source)
        self.assertTrue(c.embedded_broker)

    def test_default_types(self) -> None:
        """Seconds and rates are floats, sizes and counts ints, whatever was written."""
        c = config.parse({"http": {"idle_timeout": 5}, "limits": {"rate": 7}}, BASE)
        self.assertIs(type(c.http.idle_timeout), float)
        self.assertIs(type(c.limits.rate), float)
        self.assertIs(type(c.mqtt.publish_timeout), float)
        self.assertIs(type(c.limits.burst), int)

    def test_empty_document(self) -> None:
        """An empty document, or empty sections, is the default configuration."""
        self.assertEqual(config.parse({}, BASE), config.default())
        sections = [f.name for f in attrs.fields(Config) if f.name != "source"]
        empty: dict[str, Any] = {section: {} for section in sections}
        self.assertEqual(config.parse(empty, BASE), config.default())

    def test_spec_block(self) -> None:
        """
        The documented block parses to the defaults, except the example C{[tls]}
        file names and that it names a broker.
        """
        c = config.parse(tomllib.loads(CONTRACT_BLOCK), BASE)
        d = config.default()
        tls = attrs.evolve(
            d.tls,
            cert=os.path.join(BASE, "server.crt"),
            key=os.path.join(BASE, "server.key"),
            client_ca=os.path.join(BASE, "ca.crt"),
            crl=os.path.join(BASE, "revoked.crl"),
        )
        mqtt = attrs.evolve(d.mqtt, brokers_configured=True)
        self.assertEqual(c, attrs.evolve(d, tls=tls, mqtt=mqtt))
        self.assertFalse(c.embedded_broker)

    def test_spec_keys(self) -> None:
        """The contract names exactly the ten sections and their keys."""
        self.assertEqual(len(CONTRACT_KEYS), 37)
        self.assertEqual(
            {k.split(".")[0] for k in CONTRACT_KEYS},
            {f.name for f in attrs.fields(Config)} - {"source"},
        )


class ExampleFileTests(SynchronousTestCase):
    """C{conf/gateway.toml} is a working, complete example."""

    def test_loads(self) -> None:
        """The example loads, with a broker named and paths beside the file."""
        c = config.load(EXAMPLE)
        self.assertEqual(c.source, EXAMPLE)
        self.assertEqual(
            c.mqtt.brokers,
            (BrokerAddress("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),),
        )
        self.assertFalse(c.embedded_broker)
        folder = os.path.dirname(EXAMPLE)
        self.assertEqual(c.tls.cert, os.path.join(folder, "server.crt"))
        self.assertEqual(c.auth.password_file, os.path.join(folder, "passwords"))

    def test_every_key(self) -> None:
        """The example sets every documented key, and no other."""
        with open(EXAMPLE, "rb") as f:
            self.assertEqual(keys_of(tomllib.load(f)), CONTRACT_KEYS)

    def test_every_key_commented(self) -> None:
        """Every key in the example has a comment right above it or beside it."""
        with open(EXAMPLE, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for number, line in enumerate(lines):
            if "=" not in line or line.startswith(("#", "[")):
                continue
            key = line.split("=")[0].strip()
            documented = "#" in line or any(
                prev.startswith("#") for prev in lines[max(0, number - 2) : number]
            )
            self.assertTrue(documented, f"{key} has no comment")


class PathTests(SynchronousTestCase):
    """Relative paths are relative to the config file's folder."""

    def test_relative(self) -> None:
        """Every path key resolves relative paths against the base folder."""
        document = {
            "tls": {"cert": "s.crt", "key": "k/s.key", "client_ca": "../ca.crt"},
            "mqtt": {"ca": "./m.ca", "cert": "m.crt", "key": "m.key"},
            "auth": {"password_file": "passwords", "acl_file": "acl"},
            "log": {"access": "log/access.jsonl"},
        }
        document["tls"]["crl"] = "r.crl"
        c = config.parse(document, BASE)
        self.assertEqual(
            (c.tls.cert, c.tls.key, c.tls.client_ca, c.tls.crl),
            (
                os.path.join(BASE, "s.crt"),
                os.path.join(BASE, "k", "s.key"),
                os.path.join(os.path.dirname(BASE), "ca.crt"),
                os.path.join(BASE, "r.crl"),
            ),
        )
        self.assertEqual(
            (c.mqtt.ca, c.mqtt.cert, c.mqtt.key),
            tuple(os.path.join(BASE, n) for n in ("m.ca", "m.crt", "m.key")),
        )
        self.assertEqual(c.auth.password_file, os.path.join(BASE, "passwords"))
        self.assertEqual(c.auth.acl_file, os.path.join(BASE, "acl"))
        self.assertEqual(c.log.access, os.path.join(BASE, "log", "access.jsonl"))

    def test_absolute_and_unset(self) -> None:
        """Absolute paths stay; C{""} is unset; C{"-"} and C{""} are not log paths."""
        c = config.parse(
            {"tls": {"cert": "/x/s.crt", "key": ""}, "log": {"access": ""}}, BASE
        )
        self.assertEqual(c.tls.cert, "/x/s.crt")
        self.assertIsNone(c.tls.key)
        self.assertEqual(c.log.access, "")
        self.assertEqual(config.parse({"log": {"access": "-"}}, BASE).log.access, "-")

    def test_relative_base(self) -> None:
        """A relative base folder still gives absolute paths."""
        c = config.parse({"auth": {"acl_file": "acl"}}, "conf")
        self.assertEqual(c.auth.acl_file, os.path.abspath(os.path.join("conf", "acl")))

    def test_load_resolves_against_file_folder(self) -> None:
        """L{config.load} resolves paths against the file's folder, not the cwd."""
        folder = os.path.abspath(self.mktemp())
        path = write(folder, "gw.toml", b'[auth]\npassword_file = "pw"\n')
        c = config.load(os.path.relpath(path))
        self.assertEqual(c.auth.password_file, os.path.join(folder, "pw"))
        self.assertEqual(c.source, path)


class ErrorTests(SynchronousTestCase):
    """Each class of mistake stops with one line naming the key."""

    CASES: list[tuple[dict[str, Any], str]] = [
        # unknown names
        ({"http": {"listn": []}}, "http.listn: unknown key (did you mean 'listen'?)"),
        ({"htpp": {}}, "htpp: unknown section (did you mean 'http'?)"),
        ({"mqtt": {"zzz": 1}}, "mqtt.zzz: unknown key"),
        (
            {"http": {"brokers": []}},
            "http.brokers: unknown key (did you mean 'mqtt.brokers'?)",
        ),
        (
            {"listen": "tcp:80"},
            "listen: unknown section "
            "(did you mean 'http.listen', 'tls.listen' or 'admin.listen'?)",
        ),
        ({"http": {"a b": 1}}, 'http."a b": unknown key'),
        ({"http": ["tcp:80"]}, "http: expected a table [http], got a list"),
        # types
        ({"mqtt": {"keepalive": "x"}}, "mqtt.keepalive: expected an integer, got 'x'"),
        (
            {"mqtt": {"keepalive": True}},
            "mqtt.keepalive: expected an integer, got true",
        ),
        ({"http": {"max_body": 1.5}}, "http.max_body: expected an integer, got 1.5"),
        (
            {"http": {"idle_timeout": "1"}},
            "http.idle_timeout: expected a number, got '1'",
        ),
        (
            {"limits": {"rate": float("inf")}},
            "limits.rate: expected a finite number, got inf",
        ),
        ({"mqtt": {"username": 1}}, "mqtt.username: expected a string, got 1"),
        (
            {"auth": {"allow_anonymous": "yes"}},
            "auth.allow_anonymous: expected true or false, got 'yes'",
        ),
        (
            {"http": {"listen": 8080}},
            "http.listen: expected a list of strings, got 8080",
        ),
        (
            {"http": {"listen": ["tcp:1", 2]}},
            "http.listen[1]: expected a string, got 2",
        ),
        ({"tls": {"listen": [""]}}, "tls.listen[0]: must not be empty"),
        ({"tls": {"cert": {}}}, "tls.cert: expected a string, got a table"),
        # ranges and choices
        ({"http": {"max_body": 0}}, "http.max_body: must be at least 1, got 0"),
        ({"http": {"max_batch": 0}}, "http.max_batch: must be at least 1, got 0"),
        (
            {"http": {"idle_timeout": 0}},
            "http.idle_timeout: must be greater than 0, got 0",
        ),
        (
            {"mqtt": {"keepalive": 65536}},
            "mqtt.keepalive: must be between 0 and 65535, got 65536",
        ),
        (
            {"mqtt": {"publish_timeout": -1}},
            "mqtt.publish_timeout: must be greater than 0, got -1",
        ),
        ({"limits": {"rate": -1}}, "limits.rate: must be at least 0, got -1"),
        (
            {"limits": {"client_burst": -1}},
            "limits.client_burst: must be at least 0, got -1",
        ),
        (
            {"limits": {"burst": 0}},
            "limits.burst: must be at least 1 when limits.rate is above 0, got 0",
        ),
        (
            {"limits": {"client_rate": 5}},
            "limits.client_burst: must be at least 1 "
            "when limits.client_rate is above 0, got 0",
        ),
        (
            {"tls": {"client_cert": "yes"}},
            "tls.client_cert: expected 'none', 'optional' or 'required', got 'yes'",
        ),
        (
            {"mqtt": {"protocol": "3.1"}},
            "mqtt.protocol: expected '5', '3.1.1' or 'auto', got '3.1'",
        ),
        ({"mqtt": {"protocol": 4}}, "mqtt.protocol: expected a string, got 4"),
        (
            {"auth": {"mode": "none"}},
            "auth.mode: expected 'gateway' or 'broker', got 'none'",
        ),
        (
            {"aliyun": {"payload_encoding": "hex"}},
            "aliyun.payload_encoding: expected 'raw' or 'base64', got 'hex'",
        ),
        ({"mqtt": {"client_id": ""}}, "mqtt.client_id: must not be empty"),
        (
            {"mqtt": {"client_id": "gw-{host}"}},
            "mqtt.client_id: unknown placeholder '{host}' "
            "(only {hostname}, {worker} and {pid} are replaced)",
        ),
        # brokers
        (
            {"mqtt": {"brokers": []}},
            "mqtt.brokers: must name at least one broker "
            "(leave the key out to run the embedded broker)",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://a", "http://b"]}},
            "mqtt.brokers[1]: unsupported scheme 'http' (use mqtt:// or mqtts://)",
        ),
        (
            {"mqtt": {"brokers": ["localhost:1883"]}},
            "mqtt.brokers[0]: expected a URI such as 'mqtt://host:1883', "
            "got 'localhost:1883'",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://user:secret@h"]}},
            "mqtt.brokers[0]: user info is not allowed in a broker URI "
            "(set mqtt.username and mqtt.password)",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://h:1883/x"]}},
            "mqtt.brokers[0]: a broker URI has no path, got '/x'",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://h?x=1"]}},
            "mqtt.brokers[0]: a broker URI has no query or fragment",
        ),
        ({"mqtt": {"brokers": ["mqtt://:1883"]}}, "mqtt.brokers[0]: missing host"),
        (
            {"mqtt": {"brokers": ["mqtt://h:0"]}},
            "mqtt.brokers[0]: the port must be between 1 and 65535, got 0",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://h:x"]}},
            "mqtt.brokers[0]: the port must be a number, got 'x'",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://h:"]}},
            "mqtt.brokers[0]: the port must be a number, got ''",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://::1"]}},
            "mqtt.brokers[0]: IPv6 addresses must be in brackets, "
            "e.g. mqtt://[::1]:1883",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://[::g]"]}},
            "mqtt.brokers[0]: '::g' is not a valid IPv6 address",
        ),
        (
            {"mqtt": {"brokers": ["mqtt://256.0.0.1"]}},
            "mqtt.brokers[0]: '256.0.0.1' is not a valid IPv4 address",
        ),
        ({"mqtt": {"brokers": ["mqtt://a b"]}}, "mqtt.brokers[0]: invalid host 'a b'"),
        # rules spanning keys
        (
            {"tls": {"listen": ["tcp:8443"], "key": "k"}},
            "tls.cert: required when tls.listen is set",
        ),
        (
            {"tls": {"listen": ["tcp:8443"], "cert": "c"}},
            "tls.key: required when tls.listen is set",
        ),
        (
            {"tls": {"listen": ["tcp:8443"], "cert": "c", "key": "k"}},
            "tls.client_ca: required when tls.listen is set and tls.client_cert is "
            "'optional' (or set tls.client_cert = \"none\")",
        ),
        (
            {"http": {"listen": []}},
            "http.listen: nothing to serve (http.listen and tls.listen are both empty)",
        ),
        ({"mqtt": {"cert": "c"}}, "mqtt.key: required when mqtt.cert is set"),
        ({"mqtt": {"key": "k"}}, "mqtt.cert: required when mqtt.key is set"),
        (
            {"aliyun": {"instance_id": "i"}},
            "aliyun.access_keys: must not be empty when aliyun.instance_id is set",
        ),
        (
            {"aliyun": {"access_keys": []}},
            'aliyun.access_keys: expected a table of AccessKeyId = "AccessKeySecret", '
            "got a list",
        ),
        (
            {"aliyun": {"access_keys": {"": "s"}}},
            'aliyun.access_keys."": the AccessKeyId must not be empty',
        ),
        (
            {"aliyun": {"access_keys": {"id": ""}}},
            "aliyun.access_keys.id: must not be empty",
        ),
    ]

    def test_messages(self) -> None:
        """Representative mistakes give exactly these one-line messages."""
        for document, expected in self.CASES:
            self.assertEqual(error(document), expected, document)

    def test_secrets_not_echoed(self) -> None:
        """A secret of the wrong type is described by its type, never shown."""
        self.assertEqual(
            error({"mqtt": {"password": 123456}}),
            "mqtt.password: expected a string, got an integer",
        )
        self.assertEqual(
            error({"aliyun": {"access_keys": {"LTAI": 987654}}}),
            "aliyun.access_keys.LTAI: expected a string, got an integer",
        )

    def test_odd_key_stays_one_line(self) -> None:
        """A key with control characters is quoted, so the error stays one line."""
        self.assertEqual(error({"http": {"a\nb": 1}}), 'http."a\\nb": unknown key')

    @given(st.text(min_size=1))
    def test_any_unknown_key(self, key: str) -> None:
        """Any unknown key in a section is refused with one line that starts with it."""
        if key in {
            "listen",
            "max_body",
            "idle_timeout",
            "max_connections_per_source",
            "max_batch",
        }:
            return
        message = error({"http": {key: 1}})
        self.assertIn(": unknown key", message)
        self.assertTrue(message.startswith("http."), message)

    def test_no_hint_when_nothing_close(self) -> None:
        """The hint is only given when a valid name is close."""
        self.assertEqual(error({"log": {"xyz": 1}}), "log.xyz: unknown key")


class AcceptedValueTests(SynchronousTestCase):
    """Conveniences: forms the parser accepts beyond the obvious."""

    def test_integers_for_floats(self) -> None:
        """Integers are accepted where seconds or rates are expected."""
        c = config.parse(
            {
                "http": {"idle_timeout": 1},
                "mqtt": {"publish_timeout": 2},
                "limits": {"rate": 0, "client_rate": 3, "client_burst": 6},
            },
            BASE,
        )
        self.assertEqual(
            (c.http.idle_timeout, c.mqtt.publish_timeout, c.limits.client_rate),
            (1.0, 2.0, 3.0),
        )
        c = config.parse({"mqtt": {"publish_timeout": 2.5}}, BASE)
        self.assertEqual(c.mqtt.publish_timeout, 2.5)

    def test_rate_zero_needs_no_burst(self) -> None:
        """A rate of 0 turns the bucket off, and then a burst of 0 is fine."""
        c = config.parse({"limits": {"rate": 0, "burst": 0}}, BASE)
        self.assertEqual((c.limits.rate, c.limits.burst), (0.0, 0))

    def test_single_string_list(self) -> None:
        """A single string where a list is expected is a one-element list."""
        c = config.parse(
            {
                "http": {"listen": "tcp:80"},
                "tls": {
                    "listen": "tcp:443",
                    "cert": "c",
                    "key": "k",
                    "client_cert": "none",
                },
                "mqtt": {"brokers": "mqtts://broker.example"},
            },
            BASE,
        )
        self.assertEqual(c.http.listen, ("tcp:80",))
        self.assertEqual(c.tls.listen, ("tcp:443",))
        self.assertEqual(
            c.mqtt.brokers,
            (BrokerAddress("mqtts://broker.example", "broker.example", 8883, True),),
        )

    def test_protocol(self) -> None:
        """C{protocol} takes C{"5"}, C{"3.1.1"}, C{"auto"}, and the integer 5."""
        for value, expected in [("5", "5"), (5, "5"), ("3.1.1", "3.1.1")]:
            c = config.parse({"mqtt": {"protocol": value}}, BASE)
            self.assertEqual(c.mqtt.protocol, expected)

    def test_https_only(self) -> None:
        """An empty C{http.listen} is fine when HTTPS is served."""
        tls = {"listen": ["tcp:443"], "cert": "c", "key": "k", "client_ca": "ca"}
        c = config.parse({"http": {"listen": []}, "tls": tls}, BASE)
        self.assertEqual(c.http.listen, ())
        self.assertEqual(c.tls.client_ca, os.path.join(BASE, "ca"))

    def test_aliyun(self) -> None:
        """An instance id with access keys enables the Alibaba API."""
        c = config.parse(
            {"aliyun": {"instance_id": "mqtt-cn-1", "access_keys": {"id1": "s1"}}},
            BASE,
        )
        self.assertTrue(c.aliyun.enabled)
        self.assertEqual(dict(c.aliyun.access_keys), {"id1": "s1"})

    def test_client_id(self) -> None:
        """C{{hostname}} in C{client_id} is replaced by the host name."""
        mqtt = config.parse({"mqtt": {"client_id": "gw-{hostname}-a"}}, BASE).mqtt
        self.assertEqual(mqtt.gateway_client_id("box"), "gw-box-a")
        self.assertTrue(mqtt.gateway_client_id().startswith("gw-"))
        fixed = config.parse({"mqtt": {"client_id": "gw"}}, BASE).mqtt
        self.assertEqual(fixed.gateway_client_id("box"), "gw")


class LoadTests(SynchronousTestCase):
    """L{config.load} names the file in every error about it."""

    def test_missing(self) -> None:
        """A missing file is one line with its path and the reason."""
        path = os.path.abspath(self.mktemp())
        e = self.assertRaises(ConfigError, config.load, path)
        self.assertEqual(str(e), f"{path}: No such file or directory")

    def test_directory(self) -> None:
        """A directory is refused with its path."""
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        e = self.assertRaises(ConfigError, config.load, path)
        self.assertEqual(str(e), f"{path}: Is a directory")

    def test_syntax(self) -> None:
        """A TOML syntax error is one line with the path, line and column."""
        path = write(
            self.mktemp(), "gateway.toml", b"[http]\nlisten = [\n\nmax_body 1\n"
        )
        e = self.assertRaises(ConfigError, config.load, path)
        self.assertTrue(str(e).startswith(f"{path}: "), str(e))
        self.assertIn("line 4", str(e))
        self.assertNotIn("\n", str(e))

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is refused with its path."""
        path = write(self.mktemp(), "gateway.toml", b"# \xff\n")
        e = self.assertRaises(ConfigError, config.load, path)
        self.assertTrue(str(e).startswith(f"{path}: not UTF-8 text"), str(e))

    def test_key_error(self) -> None:
        """A bad key in a file is named as in L{config.parse}."""
        path = write(self.mktemp(), "gateway.toml", b"[mqtt]\nkeepalive = 'x'\n")
        e = self.assertRaises(ConfigError, config.load, path)
        self.assertEqual(str(e), "mqtt.keepalive: expected an integer, got 'x'")


class OverrideTests(SynchronousTestCase):
    """The command-line options replace the file's values and are validated."""

    def test_replace(self) -> None:
        """Each option given replaces its key; brokers are parsed."""
        c = config.default().with_overrides(
            listen=["tcp:1", "tcp:2"],
            brokers=["mqtt://[::1]", "mqtts://b:1"],
            admin="tcp:9100",
        )
        self.assertEqual(c.http.listen, ("tcp:1", "tcp:2"))
        self.assertEqual(
            c.mqtt.brokers,
            (
                BrokerAddress("mqtt://[::1]", "::1", 1883, False),
                BrokerAddress("mqtts://b:1", "b", 1, True),
            ),
        )
        self.assertEqual(c.admin.listen, "tcp:9100")
        self.assertFalse(c.embedded_broker)

    def test_nothing_given(self) -> None:
        """Options not given (empty) leave the file's values alone."""
        c = config.parse({"admin": {"listen": "tcp:1"}}, BASE)
        self.assertEqual(c.with_overrides(admin="", listen=()), c)
        self.assertEqual(c.with_overrides(admin=None), c)

    def test_tls_listen(self) -> None:
        """C{--tls-listen} serves HTTPS when the file has the certificate settings."""
        tls = {"cert": "c", "key": "k", "client_cert": "none"}
        c = config.parse({"tls": tls}, BASE).with_overrides(tls_listen=["tcp:443"])
        self.assertEqual(c.tls.listen, ("tcp:443",))

    def test_errors_name_the_option(self) -> None:
        """A bad command-line value is reported by its option, not a file key."""
        d = config.default()
        cases = [
            (
                {"brokers": ["http://x"]},
                "--broker: unsupported scheme 'http' (use mqtt:// or mqtts://)",
            ),
            (
                {"brokers": ["mqtt://a", "mqtt://b:99999"]},
                "--broker #2: the port must be between 1 and 65535, got 99999",
            ),
            ({"listen": [""]}, "--listen: must not be empty"),
            ({"tls_listen": ["tcp:1", ""]}, "--tls-listen #2: must not be empty"),
            (
                {"tls_listen": ["tcp:443"]},
                "--tls-listen: needs tls.cert in the config file",
            ),
        ]
        for kwargs, expected in cases:
            e = self.assertRaises(ConfigError, d.with_overrides, **kwargs)
            self.assertEqual(str(e), expected)
        partial = config.parse({"tls": {"cert": "c", "key": "k"}}, BASE)
        e = self.assertRaises(ConfigError, partial.with_overrides, tls_listen=["t"])
        self.assertEqual(
            str(e),
            "--tls-listen: needs tls.client_ca in the config file since "
            "tls.client_cert is 'optional' (or set tls.client_cert = \"none\")",
        )


class EmbeddedBrokerTests(SynchronousTestCase):
    """The embedded broker runs only when no broker is configured anywhere."""

    def test_no_broker(self) -> None:
        """No C{brokers} key and no C{--broker}: the embedded broker runs."""
        self.assertTrue(config.default().embedded_broker)
        c = config.parse({"mqtt": {"keepalive": 5}}, BASE)
        self.assertTrue(c.embedded_broker)
        self.assertTrue(c.with_overrides(listen=["tcp:1"]).embedded_broker)

    def test_file_broker(self) -> None:
        """A C{brokers} key, even naming the default address, turns it off."""
        c = config.parse({"mqtt": {"brokers": ["mqtt://127.0.0.1:1883"]}}, BASE)
        self.assertFalse(c.embedded_broker)
        self.assertEqual(c.mqtt.brokers, config.default().mqtt.brokers)

    def test_command_line_broker(self) -> None:
        """C{--broker} turns it off."""
        c = config.default().with_overrides(brokers=["mqtt://127.0.0.1"])
        self.assertFalse(c.embedded_broker)


class SecretTests(SynchronousTestCase):
    """Passwords and AccessKey secrets never appear in C{repr}."""

    def test_repr(self) -> None:
        """C{repr} shows the AccessKey ids but neither secret."""
        c = config.parse(
            {
                "mqtt": {"username": "gw", "password": "hunter2-pw"},
                "aliyun": {
                    "instance_id": "i",
                    "access_keys": {"LTAIkeyid": "s3cr3t-value"},
                },
            },
            BASE,
        )
        for text in (repr(c), str(c), repr(c.aliyun.access_keys)):
            self.assertNotIn("hunter2-pw", text)
            self.assertNotIn("s3cr3t-value", text)
        self.assertIn("LTAIkeyid", repr(c))
        self.assertEqual(c.mqtt.password, "hunter2-pw")
        self.assertEqual(c.aliyun.access_keys["LTAIkeyid"], "s3cr3t-value")

    def test_access_keys_frozen(self) -> None:
        """The access keys cannot be changed after parsing, and hash by value."""
        a = AliyunConfig(instance_id="i", access_keys={"k": "s"})
        b = AliyunConfig(instance_id="i", access_keys={"k": "s"})
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))

        def assign() -> None:
            keys: Any = a.access_keys
            keys["k"] = "t"

        self.assertRaises(TypeError, assign)
        self.assertNotIsInstance(a.access_keys, MutableMapping)
        self.assertEqual(hash(config.default()), hash(config.default()))


hostnames = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9-]{1,10})*", fullmatch=True
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


class BrokerURITests(SynchronousTestCase):
    """Broker URIs give back the host and port that were written."""

    @given(
        host=st.one_of(hostnames, ipv4, ipv6),
        port=st.none() | st.integers(1, 65535),
        tls=st.booleans(),
        slash=st.booleans(),
    )
    def test_round_trip(
        self, host: str, port: int | None, tls: bool, slash: bool
    ) -> None:
        """
        Any host (name, IPv4, bracketed IPv6) and port survive parsing, the default
        port follows the scheme, and the endpoint string connects to them.
        """
        if host.replace(".", "").isdigit():
            # Dotted numbers that are not an IPv4 address are refused on purpose.
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                return
        written = f"[{host}]" if ":" in host else host
        uri = f"mqtt{'s' if tls else ''}://{written}"
        if port is not None:
            uri += f":{port}"
        if slash:
            uri += "/"
        address = config.parse_broker_uri(uri)
        expected_port = port if port is not None else (8883 if tls else 1883)
        self.assertEqual(address, BrokerAddress(uri, host, expected_port, tls))

        reactor = MemoryReactor()
        endpoint = clientFromString(reactor, address.client_endpoint_string())
        endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(reactor.tcpClients[0][:2], (host, expected_port))

    def test_scheme_case(self) -> None:
        """The scheme is case-insensitive, as URIs are."""
        self.assertEqual(
            config.parse_broker_uri("MQTTS://h").port,
            8883,
        )

    def test_ipv6_zone(self) -> None:
        """A link-local IPv6 address may carry a zone (C{%25} in the URI)."""
        address = config.parse_broker_uri("mqtt://[fe80::1%25eth0]:1884")
        self.assertEqual((address.host, address.port), ("fe80::1%eth0", 1884))
        self.assertEqual(
            address.client_endpoint_string(),
            "tcp:host=fe80\\:\\:1%eth0:port=1884",
        )

    def test_label(self) -> None:
        """Errors start with the label the caller passes."""
        e = self.assertRaises(ConfigError, config.parse_broker_uri, "x", "here")
        self.assertTrue(str(e).startswith("here: "))
