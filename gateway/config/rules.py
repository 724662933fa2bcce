# -*- test-case-name: tests.config.test_loader -*-
"""
The rules that span keys, checked once a whole configuration is known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.error import ConfigError

if TYPE_CHECKING:
    from gateway.config.settings import Config

__all__ = ["check"]


def check(config: Config, tls_option: str | None = None) -> None:
    """
    The rules that span keys.

    @param tls_option: the command-line option that set C{[tls] listen}, if any; it
        is named instead of C{tls.cert} (etc.) since the file alone was fine.
    """
    tls = config.tls
    if tls.listen:
        needed = [("tls.cert", tls.cert), ("tls.key", tls.key)]
        if tls.client_cert != "none":
            needed.append(("tls.client_ca", tls.client_ca))
        for key, path in needed:
            if path is not None:
                continue
            why = ""
            if key == "tls.client_ca":
                why = (
                    f"tls.client_cert is {tls.client_cert!r} "
                    '(or set tls.client_cert = "none")'
                )
            if tls_option:
                since = f" since {why}" if why else ""
                raise ConfigError(
                    f"{tls_option}: needs {key} in the config file{since}"
                )
            also = f" and {why}" if why else ""
            raise ConfigError(f"{key}: required when tls.listen is set{also}")
    if not config.http.listen and not tls.listen:
        raise ConfigError(
            "http.listen: nothing to serve (http.listen and tls.listen are both empty)"
        )
    mqtt = config.mqtt
    if (mqtt.cert is None) != (mqtt.key is None):
        missing, given = ("mqtt.key", "mqtt.cert")
        if mqtt.cert is None:
            missing, given = given, missing
        raise ConfigError(f"{missing}: required when {given} is set")
    if (
        config.server.workers > 1
        and config.auth.mode == "gateway"
        and "{worker}" not in mqtt.client_id
        and "{pid}" not in mqtt.client_id
    ):
        # One client id for several sessions: the broker would keep only one.
        raise ConfigError(
            "mqtt.client_id: must contain {worker} or {pid} when server.workers "
            "is above 1 (each worker has its own broker session), "
            f"got {mqtt.client_id!r}"
        )
    limits = config.limits
    for rate, burst in (("rate", "burst"), ("client_rate", "client_burst")):
        if getattr(limits, rate) > 0 and getattr(limits, burst) < 1:
            raise ConfigError(
                f"limits.{burst}: must be at least 1 when limits.{rate} is above 0, "
                f"got {getattr(limits, burst)}"
            )
    if config.aliyun.enabled and not config.aliyun.access_keys:
        raise ConfigError(
            "aliyun.access_keys: must not be empty when aliyun.instance_id is set"
        )
