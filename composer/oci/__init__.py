"""Talking to OCI registries: `client` (the distribution API, digest-checked and fail-closed),
`artifacts` (JSON documents as OCI artifacts, with subjects), `mutate` (appending a layer to
an image's manifest and config, as pure functions)."""

from __future__ import annotations

from typing import Optional

from composer.oci.client import Registry
from composer.oci.transport import RetryPolicy
from composer.settings import Settings


def connect(settings: Settings, host: Optional[str] = None) -> Registry:
    """The client for host (default: the configured registry) with the user's TLS settings, made
    once per Settings. Not for another thread: give a thread `Registry.clone()`."""
    host = host or settings.registry_host
    if host not in settings.clients:
        ca = settings.ca_bundle if settings.ca_bundle and settings.ca_bundle != "none" else None
        settings.clients[host] = Registry(host, insecure_hosts=settings.insecure_registries, ca_bundle=ca,
                                          retry=retry_policy(settings))
    return settings.clients[host]


def retry_policy(settings: Settings) -> RetryPolicy:
    """How hard registry operations are tried (COMPOSER_REGISTRY_ATTEMPTS, _BACKOFF, _RETRY_TIME)."""
    return RetryPolicy(attempts=settings.registry_attempts, backoff=settings.registry_backoff,
                       budget=settings.registry_retry_time)
