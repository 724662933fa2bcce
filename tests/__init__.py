"""
The trial test suite, laid out like the package: C{tests/web/}, C{tests/mqtt/},
C{tests/auth/} and C{tests/config/} test the modules of C{gateway/web/},
C{gateway/mqtt/}, C{gateway/auth/} and C{gateway/config/}, one C{test_<module>.py}
per module under test; the top-level modules of C{gateway/} are tested here, beside
this file. C{tests/integration/} holds the end-to-end tests that cross every
module: they start the real daemon and real brokers and check what arrives, so a
failure there names a behaviour, not a module.

Test modules import no other test module. What several of them share lives in the
support modules beside this file: L{tests.fakes} (the in-memory stand-ins: the one
publisher fake, an MQTT broker, the daemon as a child process), L{tests.gateway}
(the assembled gateway, its configuration and curl), L{tests.brokers} and
L{tests.brokers_more} (real brokers on free ports), L{tests.aliyun_sdk} (requests
signed by Alibaba's SDKs), L{tests.certs} and L{tests.linkcutter}.

Hypothesis runs without its per-example deadline: these
machines are shared, and a first example that pays for an import or a cold cache
would otherwise fail as "flaky" although nothing is wrong.
"""

from hypothesis import settings

settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")
