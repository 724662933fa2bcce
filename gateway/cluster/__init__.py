"""
State shared through Redis by every gateway process of every host: the rate
limits, the failed-login counters and the SendMessage nonce cache.

L{gateway.cluster.redis} holds the connection and L{gateway.cluster.health}
whether Redis is usable; L{gateway.cluster.leases} the message rate limits,
L{gateway.cluster.logins} the failed logins, L{gateway.cluster.nonces} the
nonces; L{gateway.cluster.scripts} the Lua that runs inside Redis, atomically;
L{gateway.cluster.parts} how the service tree assembles them.
"""
