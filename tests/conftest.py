"""Shared test fixtures: where ../shared lives, and the golden vectors in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.shared_data import golden_dir


@pytest.fixture(scope="session")
def golden() -> Path:
    """The official-code reference vectors; skipped (with the reason) where ../shared is absent."""
    return golden_dir()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's model directory."""
    monkeypatch.setenv("INPAINTD_HOME", str(tmp_path_factory.mktemp("inpaintd_home")))


def _only_loopback() -> bool:
    import socket

    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``scaleout`` tests start Ray, which must never listen beyond loopback: outside a
    loopback-only network namespace they are deselected, and the launcher test in
    ``test_scaleout.py`` runs them inside one (``unshare -n``)."""
    if _only_loopback():
        return
    drop = [item for item in items if item.get_closest_marker("scaleout")]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if not item.get_closest_marker("scaleout")]
