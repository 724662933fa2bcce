"""
The HTTP side: a small HTTP/1.x server (L{gateway.web.server}) and the API adapters
that turn an L{HTTPRequest} into an L{HTTPResponse}.
"""
