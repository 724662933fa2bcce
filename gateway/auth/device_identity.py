# -*- test-case-name: tests.auth.test_certs -*-
"""
Who a verified client certificate names: the one rule for what a device
certificate is (an end-entity certificate with exactly one non-empty common
name) and the device's name read from it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["device_certificate_problem", "peer_common_name"]


def peer_common_name(certificate: x509.Certificate) -> str | None:
    """
    The common name (CN) in C{certificate}'s subject, or C{None} unless it has
    exactly one, not empty.
    """
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) and value else None


def device_certificate_problem(certificate: x509.Certificate) -> str | None:
    """
    Why C{certificate} cannot be a device's, or C{None}: a device certificate
    is an end-entity certificate (no C{CA:TRUE} basic constraint) whose subject
    has exactly one common name, not empty.
    """
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        ).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        return "it is a CA certificate (CA:TRUE), not a device certificate"
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return (
            f"its subject has {len(names)} common names (CN); a device "
            "certificate needs exactly one"
        )
    if not names[0].value:
        return "its common name (CN) is empty"
    return None
