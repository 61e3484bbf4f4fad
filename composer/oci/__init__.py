"""Talking to OCI registries: `client` (the distribution API, digest-checked and fail-closed),
`artifacts` (JSON documents as OCI artifacts, with subjects), `mutate` (appending a layer to
an image's manifest and config, as pure functions)."""

from __future__ import annotations

from typing import Optional

from composer.oci.client import Registry
from composer.settings import Settings


def connect(settings: Settings, host: Optional[str] = None) -> Registry:
    """A client for host (default: the configured registry) with the user's TLS settings."""
    ca = settings.ca_bundle if settings.ca_bundle and settings.ca_bundle != "none" else None
    return Registry(host or settings.registry_host, insecure_hosts=settings.insecure_registries, ca_bundle=ca,
                    attempts=settings.registry_attempts)
