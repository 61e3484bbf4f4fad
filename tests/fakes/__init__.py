"""Stand-ins for unit tests. The integration tests keep using the real engine and registry.

The fake registry as a pytest fixture: wrap `registry_fixture` where the tests are

    import pytest
    from tests.fakes import FakeRegistry, registry_fixture

    fake_registry = pytest.fixture(registry_fixture)   # in a test module or a conftest

    def test_push(fake_registry):
        reg = Registry(fake_registry.host)            # loopback: plain HTTP
        ...
        assert fake_registry.tags("envs") == ["x"]

Each test gets a fresh, empty registry, stopped when the test ends. For options
(referrers_api=True, monolithic_post=True, delete_enabled=False, absolute_locations=False)
use `with FakeRegistry(...) as reg:` in the test, or a fixture of your own that does.
"""

from __future__ import annotations

from typing import Iterator

from tests.fakes.registry import FakeRegistry

__all__ = ["FakeRegistry", "registry_fixture"]


def registry_fixture() -> Iterator[FakeRegistry]:
    """A fresh FakeRegistry for one test (a generator: wrap it with pytest.fixture)."""
    with FakeRegistry() as registry:
        yield registry
