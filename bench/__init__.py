"""
Benchmarks of mqtt-http-gateway: C{python -m bench} (or C{./dev bench}).

Scenarios (L{bench.scenario.SCENARIOS}; pick some with C{--scenarios}): 32
connections POSTing distinct 64-byte bodies to C{/topics/bench/load?qos=1}, each
answered only after a local Mosquitto's PUBACK, against the gateway anonymous,
with Basic credentials, over HTTPS with Basic or a device certificate, with a
TLS handshake per request (full or resumed), and in broker mode; and, in the same
invocation, against a bare twisted.web resource that answers 200 to every POST
(the baselines). A subscriber counts what the broker delivered during every
gateway run. Micro-measurements time password verification and the per-request
authentication path. The results go to standard output and to
C{bench/RESULTS.md}.

Modules: L{bench.processes} (child processes: Mosquitto, the gateway, the
baseline, the subscriber), L{bench.wrk} (running wrk and reading its output),
L{bench.loadgen} (the python client, for what wrk cannot do),
L{bench.tlsprobe} (does wrk resume TLS sessions?), L{bench.credentials}
(password file and certificates), L{bench.baseline} (the baseline server),
L{bench.micro} (the micro-measurements), L{bench.scenario} (the runs),
L{bench.report} (tables and C{RESULTS.md}).
"""
