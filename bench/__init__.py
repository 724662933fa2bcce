"""
Benchmarks of mqtt-http-gateway: C{python -m bench} (or C{./dev bench}).

One scenario, the one users ask about: many keep-alive HTTP/1.1 connections
(C{wrk}, 32 by default) POSTing 64-byte bodies to C{/topics/bench/load?qos=1}, each
answered only after a local Mosquitto's PUBACK. The same load runs, in the same
invocation, against a bare twisted.web resource that answers 200 to every POST
(the baseline), and a subscriber counts what the broker delivered during the
gateway's run. The results go to standard output and to C{bench/RESULTS.md}.

Modules: L{bench.processes} (child processes: Mosquitto, the gateway, the
baseline, the subscriber), L{bench.wrk} (running wrk and reading its output),
L{bench.baseline} (the baseline server), L{bench.scenario} (the runs),
L{bench.report} (tables and C{RESULTS.md}).
"""
