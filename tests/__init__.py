"""
The trial test suite. Hypothesis runs without its per-example deadline: these
machines are shared, and a first example that pays for an import or a cold cache
would otherwise fail as "flaky" although nothing is wrong.
"""

from hypothesis import settings

settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")
