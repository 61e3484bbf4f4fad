"""Talking to OCI registries: `client` (the distribution API, digest-checked and fail-closed),
`artifacts` (JSON documents as OCI artifacts, with subjects), `mutate` (appending a layer to
an image's manifest and config, as pure functions)."""

from __future__ import annotations

from typing import Optional

from composer.oci.client import Registry
from composer.settings import Settings


def connect(settings: Settings, host: Optional[str] = None) -> Registry:
    """The client for host (default: the configured registry) with the user's TLS settings, made
    once per Settings. Not for another thread: give a thread `Registry.clone()`."""
    host = host or settings.registry_host
    if host not in settings.clients:
        ca = settings.ca_bundle if settings.ca_bundle and settings.ca_bundle != "none" else None
        settings.clients[host] = Registry(host, insecure_hosts=settings.insecure_registries, ca_bundle=ca,
                                          attempts=settings.registry_attempts)
    return settings.clients[host]
