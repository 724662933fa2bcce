"""
Several worker processes serving one host's listeners, for C{[server] workers}
above 1: a parent that binds every listener once and supervises
(L{gateway.workers.parent}, L{gateway.workers.supervisor}), workers that adopt
the sockets and serve them (L{gateway.workers.worker}), an AMP control channel
between them (L{gateway.workers.control}).
"""
