"""
L{gateway.auth.acl}: a Mosquitto C{acl_file} gives the same publish answers in the
gateway as in Mosquitto 2.0 itself, checked case by case against a real broker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from gateway.auth.acl import ACL, is_valid_filter, topic_matches
from gateway.auth.files import FileError
from tests.brokers import BrokerStartError, Mosquitto

ACL_FILE = """\
# Anonymous clients: the entries before the first 'user' line.
topic write public/#
topic deny public/secret
topic read news/#

pattern write devices/%c/#
pattern write users/%u/#
pattern deny devices/locked/#
pattern write shared/pre-%c-post
pattern write $SYS/broker/connection/%c/state
pattern read feeds/%c

user alice
topic write alice/#
topic deny devices/alice-phone/private
topic write devices/locked/alice
topic readwrite plus/+/x
topic write $app/#
topic write $SYSTEM/#
topic write $sharex/#

user bob smith
topic write #
topic deny bob/+/forbidden

user carol
topic deny #

# A second block for alice adds to the first.
user alice
topic write alice2/only

user eve
topic read eve/#

user e+vil
topic write evil/#
"""

USERS = ["alice", "bob smith", "carol", "dave", "eve", "e+vil", "u/x"]
PASSWORD = "pw-for-all"

# (user name or None for anonymous, client id, topic, may it publish?)
CASES: list[tuple[str | None, str, str, bool]] = [
    # Anonymous clients: their own block, and patterns without %u.
    (None, "anon-1", "public/a", True),
    (None, "anon-1", "public", True),  # '#' matches the parent level
    (None, "anon-1", "public/secret", False),  # deny in the same block
    (None, "anon-1", "news/today", False),  # read only
    (None, "anon-1", "alice/x", False),  # another block
    (None, "anon-1", "devices/anon-1/t", True),  # %c pattern
    (None, "anon-1", "users//t", False),  # %u patterns skip anonymous clients
    (None, "anon-1", "users/%u/t", False),
    (None, "anon-1", "shared/pre-anon-1-post", True),  # %c inside a level
    (None, "anon-1", "$SYS/broker/connection/anon-1/state", True),
    (None, "anon-1", "$SYS/broker/connection/other/state", False),
    (None, "anon-1", "feeds/anon-1", False),  # read-only pattern
    # A user with blocks (merged), patterns, deny ordering.
    ("alice", "a-1", "alice/x", True),
    ("alice", "a-1", "alice2/only", True),
    ("alice", "a-1", "public/a", False),  # the anonymous block is not hers
    ("alice", "alice-phone", "devices/alice-phone/private", False),  # user deny
    ("alice", "alice-phone", "devices/alice-phone/other", True),
    ("alice", "a-1", "devices/locked/alice", True),  # user grant beats pattern deny
    ("alice", "locked", "devices/locked/x", False),  # pattern deny beats pattern
    ("alice", "a-1", "users/alice/x", True),
    ("alice", "a-1", "plus/y/x", True),
    ("alice", "a-1", "plus//x", True),  # '+' matches an empty level
    ("alice", "a-1", "plus/y/z/x", False),  # ... but only one
    ("alice", "a-1", "$app/x", True),  # a '$' filter matches '$' topics
    ("alice", "a-1", "$SYSTEM/x", False),  # starts with $SYS: never writable
    ("alice", "a-1", "$sharex/x", False),  # starts with $share: never writable
    # A user name with a space; '#' and the $ topics.
    ("bob smith", "b-1", "anything/at/all", True),
    ("bob smith", "b-1", "$app/x", False),  # '#' does not match '$' topics
    ("bob smith", "b-1", "$SYS/x", False),
    ("bob smith", "b-1", "$share/g/x", False),
    ("bob smith", "b-1", "bob/1/forbidden", False),
    ("bob smith", "b-1", "bob/1/2/forbidden", True),
    # 'topic deny #' in a user block beats every pattern, except on $ topics.
    ("carol", "carol-1", "devices/carol-1/x", False),
    ("carol", "carol-1", "$SYS/broker/connection/carol-1/state", True),
    # Users without a block get the patterns only.
    ("dave", "d-1", "users/dave/x", True),
    ("dave", "d-1", "public/a", False),
    ("dave", "d-1", "nothing/here", False),
    ("dave", "d+1", "users/dave/x", False),  # wildcard in the client id
    ("dave", "d#1", "users/dave/x", False),
    ("dave", "a/b", "devices/a/b/c", True),  # '/' in the client id
    ("dave", "gerät-1", "devices/gerät-1/ü", True),
    ("eve", "e-1", "eve/x", False),  # read only
    ("eve", "e-1", "users/eve/x", True),
    # A wildcard in the user name: its own block still counts, patterns do not.
    ("e+vil", "x-1", "evil/x", True),
    ("e+vil", "x-1", "devices/x-1/x", False),
    ("u/x", "c-1", "users/u/x/y", True),
]


def puback_code(
    host: str, port: int, username: str | None, client_id: str, topic: str
) -> int:
    """
    Connect to the broker as C{username}/C{client_id} with MQTT 5, publish one
    QoS 1 message to C{topic}, and return the PUBACK reason code. Blocking.
    """
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    if username is not None:
        client.username_pw_set(username, PASSWORD)
    connected, acked = threading.Event(), threading.Event()
    codes: dict[str, int] = {}

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, p: Any) -> None:
        codes["connect"] = reason.value
        connected.set()

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, p: Any) -> None:
        codes["publish"] = reason.value
        acked.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        if not connected.wait(5) or codes["connect"] != 0:
            raise AssertionError(f"{username!r}/{client_id!r}: CONNACK {codes}")
        client.publish(topic, b"x", qos=1)
        if not acked.wait(5):
            raise AssertionError(f"{username!r}/{client_id!r}: no PUBACK on {topic!r}")
        return codes["publish"]
    finally:
        client.disconnect()
        client.loop_stop()


def make_password_file(path: str, users: list[str], password: str) -> None:
    """Write C{path} with the real C{mosquitto_passwd}, one line per user."""
    executable = shutil.which("mosquitto_passwd")
    if executable is None:
        raise SkipTest("mosquitto_passwd is not installed")
    for i, user in enumerate(users):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [executable, *create, "-b", path, user, password],
            check=True,
            capture_output=True,
        )


class SameAsMosquittoTests(TestCase):
    timeout = 60

    async def test_every_case_as_mosquitto_answers_it(self) -> None:
        """
        With the same acl_file, L{ACL.may_publish} and a real Mosquitto (users
        made with mosquitto_passwd, PUBACK 0x87 for denied, 0 or 0x10 for
        allowed) answer every case alike, and as the table expects.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        acl_path = os.path.join(directory, "acl")
        password_path = os.path.join(directory, "passwd")
        with open(acl_path, "w", encoding="utf-8") as f:
            f.write(ACL_FILE)
        make_password_file(password_path, USERS, PASSWORD)
        broker = Mosquitto(
            allow_anonymous=True,
            password_file=password_path,
            acl_file=acl_path,
            connection_messages=False,
        )
        await broker.start()
        self.addCleanup(broker.stop)

        def ask_broker() -> list[int]:
            return [
                puback_code(broker.host, broker.port, user, client_id, topic)
                for user, client_id, topic, _ in CASES
            ]

        codes = await deferToThread(ask_broker)
        acl = ACL.load(acl_path)
        wrong = []
        for (user, client_id, topic, expected), code in zip(CASES, codes, strict=True):
            self.assertIn(code, (0x00, 0x10, 0x87), (user, client_id, topic))
            by_broker = code != 0x87
            by_acl = acl.may_publish(topic, user, client_id)
            if not by_broker == by_acl == expected:
                wrong.append(
                    f"{user!r} {client_id!r} {topic!r}: expected {expected}, "
                    f"Mosquitto {by_broker} (0x{code:02x}), ACL {by_acl}"
                )
        self.assertEqual(wrong, [], "\n".join(wrong))
        self.assertGreaterEqual(len(CASES), 25)

    async def test_refuses_what_mosquitto_refuses(self) -> None:
        """
        Every file L{ACL.parse} refuses, Mosquitto refuses to start with too, and
        the odd lines it accepts Mosquitto accepts as well.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "acl")

        async def mosquitto_accepts(text: str) -> bool:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            broker = Mosquitto(acl_file=path, connection_messages=False)
            try:
                await broker.start()
            except BrokerStartError as e:
                self.assertRegex(str(e), r"Error.*acl[ _]file")
                return False
            await broker.stop()
            return True

        for text, _, _ in PARSE_ERRORS:
            self.assertRaises(FileError, ACL.parse, text)
            self.assertFalse(await mosquitto_accepts(text), text)
        for text in ODD_BUT_VALID:
            ACL.parse(text)
            self.assertTrue(await mosquitto_accepts(text), text)


# (file text, line number, a fragment of the message)
PARSE_ERRORS = [
    ("topic write a\nfoo bar\n", 2, "unknown keyword 'foo'"),
    ("Topic write a\n", 1, "unknown keyword 'Topic'"),
    ("  # indented comment\n", 1, "unknown keyword '#'"),
    ("topic\twrite\ta\n", 1, "unknown keyword"),
    ("topic\n", 1, "'topic' without a topic"),
    ("pattern   \n", 1, "'pattern' without a topic"),
    ("user\n", 1, "without a user name"),
    ("user    \n", 1, "without a user name"),
    ("topic wrte a/b\n", 1, "unknown access 'wrte'"),
    ("\n\ntopic write a/b # comment\n", 3, "invalid topic filter"),
    ("topic write a/#/b\n", 1, "invalid topic filter 'a/#/b'"),
    ("topic write a+\n", 1, "invalid topic filter"),
    ("pattern write %c#\n", 1, "invalid topic filter"),
    ("user x\ntopic deny a/b#\n", 2, "invalid topic filter"),
    ("topic write " + "a" * 65536 + "\n", 1, "invalid topic filter 'aaaa"),
]

ODD_BUT_VALID = [
    "topic read\n",
    "   topic   write   a b c  \r\n",
    "#topic no space needed\n\n   \n",
    "topic write\tx\n",
    "pattern read %c %u\n",
    "",
]


class ParseTests(SynchronousTestCase):
    def test_errors_name_file_and_line(self) -> None:
        """Each malformed file gives one line naming the file and line number."""
        for text, line, fragment in PARSE_ERRORS:
            with self.assertRaises(FileError) as raised:
                ACL.parse(text, "conf/acl")
            message = str(raised.exception)
            self.assertTrue(message.startswith(f"conf/acl:{line}: "), message)
            self.assertIn(fragment, message)
            self.assertNotIn("\n", message)
            self.assertLess(len(message), 200)
            self.assertEqual(raised.exception.line, line)

    def test_access_word_alone_is_the_topic(self) -> None:
        """
        As in Mosquitto, C{topic read} with nothing after it grants readwrite on
        the topic C{read}; C{topic write<TAB>x} on the topic C{"write<TAB>x"}.
        """
        acl = ACL.parse("topic read\ntopic deny\ntopic write\tx\n")
        self.assertTrue(acl.may_publish("read", None, "c"))
        self.assertTrue(acl.may_publish("deny", None, "c"))
        self.assertTrue(acl.may_publish("write\tx", None, "c"))
        self.assertFalse(acl.may_publish("x", None, "c"))

    def test_spaces(self) -> None:
        """
        Words are separated by any number of spaces; a filter and a user name may
        contain spaces and lose the blanks around them; CRLF line ends work.
        """
        acl = ACL.parse(
            "   topic   write   a b  \r\nuser    bob smith \t\r\ntopic write \t c d\r\n"
        )
        self.assertTrue(acl.may_publish("a b", None, "c"))
        self.assertTrue(acl.may_publish("c d", "bob smith", "c"))
        self.assertFalse(acl.may_publish("c d", None, "c"))

    def test_comments(self) -> None:
        """Only a C{#} in the first column starts a comment."""
        acl = ACL.parse("#topic write a\n# user x\ntopic write b\n")
        self.assertFalse(acl.may_publish("a", None, "c"))
        self.assertTrue(acl.may_publish("b", None, "c"))

    def test_no_entries_denies_everything(self) -> None:
        """An acl_file with no entries (or none for this client) denies."""
        for text in ("", "# nothing\n", "user alice\n", "topic read x\n"):
            acl = ACL.parse(text)
            self.assertFalse(acl.may_publish("x", None, "c"), text)
            self.assertFalse(acl.may_publish("x", "alice", "c"), text)

    def test_nul_refused(self) -> None:
        """A line holding U+0000 is refused (Mosquitto silently cuts it there)."""
        with self.assertRaises(FileError) as raised:
            ACL.parse("topic write a\ntopic write a\0b\n")
        self.assertEqual(raised.exception.line, 2)

    def test_load(self) -> None:
        """L{ACL.load} reads a file; errors name its path (and line)."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("user älice\ntopic write ä/#\n")
        self.assertTrue(ACL.load(path).may_publish("ä/x", "älice", "c"))
        self.assertEqual(ACL.load(path).name, path)

        with open(path, "wb") as f:
            f.write(b"topic write a\ntopic write \xff\n")
        with self.assertRaises(FileError) as raised:
            ACL.load(path)
        self.assertEqual(str(raised.exception), f"{path}:2: not UTF-8")

        missing = path + ".missing"
        with self.assertRaises(FileError) as raised:
            ACL.load(missing)
        self.assertEqual(
            str(raised.exception), f"{missing}: cannot read: No such file or directory"
        )


class MayPublishTests(SynchronousTestCase):
    def test_same_table_without_a_broker(self) -> None:
        """The real-broker table holds for L{ACL.may_publish} alone, too."""
        acl = ACL.parse(ACL_FILE)
        for user, client_id, topic, expected in CASES:
            self.assertEqual(
                acl.may_publish(topic, user, client_id),
                expected,
                (user, client_id, topic),
            )

    def test_wildcards_in_topic_refused(self) -> None:
        """A topic name with a wildcard (never valid for PUBLISH) is refused."""
        acl = ACL.parse("topic write #\n")
        for topic in ("+", "a/#", "a+b", ""):
            self.assertFalse(acl.may_publish(topic, None, "c"), topic)

    def test_pattern_substituted_as_text(self) -> None:
        """
        C{%c} and C{%u} are replaced left to right wherever they appear:
        C{%%c} is a C{%} followed by the client id.
        """
        acl = ACL.parse("pattern write %%c/%c%u\npattern write %uu/%cc\n")
        self.assertTrue(acl.may_publish("%a/aalice", "alice", "a"))
        self.assertTrue(acl.may_publish("aliceu/ac", "alice", "a"))
        self.assertFalse(acl.may_publish("%a/a", None, "a"))

    def test_empty_user_name(self) -> None:
        """
        An empty user name is a user name (not anonymous): C{%u} becomes empty
        and the anonymous block does not apply.
        """
        acl = ACL.parse("topic write anon\npattern write u/%u\n")
        self.assertTrue(acl.may_publish("u/", "", "c"))
        self.assertFalse(acl.may_publish("anon", "", "c"))
        self.assertTrue(acl.may_publish("anon", None, "c"))

    def test_repr_has_no_rules(self) -> None:
        """The repr names the file only."""
        self.assertEqual(repr(ACL.parse("topic write a", "f")), "ACL(name='f')")


# Levels small enough that random filters and topics often match.
LEVELS = st.sampled_from(["a", "b", "", "$a", "$SYS", "é", "a b"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=5).map("/".join).filter(bool)
FILTERS = st.builds(
    lambda levels, tail: "/".join(levels + tail),
    st.lists(st.one_of(LEVELS, st.just("+")), min_size=0, max_size=5),
    st.sampled_from([[], ["#"]]),
).filter(bool)


def reference_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7, written as a regular expression."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic_filter.split("/")
    pattern = "/".join(
        "[^/]*" if level == "+" else re.escape(level) for level in levels
    )
    if levels[-1] == "#":
        prefix = "/".join(
            "[^/]*" if level == "+" else re.escape(level) for level in levels[:-1]
        )
        pattern = f"{prefix}(/.*)?" if len(levels) > 1 else ".*"
    return re.fullmatch(pattern, topic, re.DOTALL) is not None


class FilterTests(SynchronousTestCase):
    @given(FILTERS, TOPICS)
    def test_matches_like_paho_and_the_spec(
        self, topic_filter: str, topic: str
    ) -> None:
        """L{topic_matches} agrees with paho-mqtt and with MQTT's definition."""
        expected = topic_matches_sub(topic_filter, topic)
        self.assertEqual(topic_matches(topic_filter, topic), expected)
        self.assertEqual(reference_matches(topic_filter, topic), expected)

    def test_known_matches(self) -> None:
        """The examples of MQTT 3.1.1 section 4.7, and the $ rule."""
        yes = [
            ("sport/tennis/player1/#", "sport/tennis/player1"),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"),
            ("sport/#", "sport"),
            ("#", "a/b"),
            ("+/+", "/finance"),
            ("/+", "/finance"),
            ("sport/+", "sport/"),
            ("$SYS/#", "$SYS/x"),
            ("$SYS/+", "$SYS/x"),
        ]
        no = [
            ("sport/tennis/+", "sport/tennis/player1/ranking"),
            ("sport/+", "sport"),
            ("+", "/finance"),
            ("#", "$SYS/x"),
            ("+/monitor/Clients", "$SYS/monitor/Clients"),
            ("a/b", "a/b/"),
        ]
        for topic_filter, topic in yes:
            self.assertTrue(topic_matches(topic_filter, topic), (topic_filter, topic))
        for topic_filter, topic in no:
            self.assertFalse(topic_matches(topic_filter, topic), (topic_filter, topic))

    @given(FILTERS)
    def test_generated_filters_valid(self, topic_filter: str) -> None:
        """Whole-level wildcards, '#' last: valid."""
        self.assertTrue(is_valid_filter(topic_filter))

    @given(FILTERS, st.sampled_from(["+", "#"]), st.data())
    def test_glued_wildcards_invalid(
        self, topic_filter: str, wildcard: str, data: st.DataObject
    ) -> None:
        """A wildcard sharing its level with another character is invalid."""
        levels = topic_filter.split("/")
        i = data.draw(st.integers(0, len(levels) - 1))
        assume(levels[i] not in ("", "+", "#"))
        levels[i] = data.draw(
            st.sampled_from([wildcard + levels[i], levels[i] + wildcard])
        )
        self.assertFalse(is_valid_filter("/".join(levels)))

    def test_invalid_filters(self) -> None:
        """Misplaced wildcards, empty, U+0000, over 65535 bytes: invalid."""
        for topic_filter in ("", "a/#/b", "#/a", "a#", "+a", "a/b+", "a\0b"):
            self.assertFalse(is_valid_filter(topic_filter), topic_filter)
        self.assertTrue(is_valid_filter("é" * 32767))
        self.assertFalse(is_valid_filter("é" * 32768))

    @given(FILTERS, TOPICS)
    def test_topic_line_grants_what_its_filter_matches(
        self, topic_filter: str, topic: str
    ) -> None:
        """
        C{topic write F} lets anonymous clients publish exactly to the topics F
        matches (but $SYS and $share topics), and C{topic deny F} takes exactly
        those away from C{topic write #}.
        """
        assume(not topic.startswith(("$SYS", "$share")))
        expected = topic_matches(topic_filter, topic)
        grant = ACL.parse(f"topic write {topic_filter}\n")
        self.assertEqual(grant.may_publish(topic, None, "c"), expected)
        deny = ACL.parse(
            f"user u\ntopic write #\ntopic write $a/#\ntopic deny {topic_filter}\n"
        )
        grants_all = topic_matches("#", topic) or topic_matches("$a/#", topic)
        self.assertEqual(deny.may_publish(topic, "u", "c"), grants_all and not expected)

    @given(st.text(min_size=1), st.one_of(st.none(), st.text()))
    def test_pattern_for_any_client(self, client_id: str, username: str | None) -> None:
        """
        C{pattern write d/%c/x} lets every client id without wildcards (and
        every user name without them) publish below its own name, and none
        with them.
        """
        acl = ACL.parse("pattern write d/%c/x\n")
        topic = f"d/{client_id}/x"
        assume("\0" not in topic)
        wildcards = set("+#") & set(client_id + (username or ""))
        self.assertEqual(acl.may_publish(topic, username, client_id), not wildcards)
