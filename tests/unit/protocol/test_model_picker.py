"""The model list of the plug-ins' settings (protocol/plugin/model_picker.py), from a welcome."""

from __future__ import annotations

from inpaintd.protocol.plugin.model_picker import (entry_label, fetch_hint, lama_entries,
                                                   models_of, usable)

WELCOME = {"models": [
    {"name": "pennet", "architecture": "pennet", "state": "available"},
    {"name": "studio-lama", "architecture": "lama", "state": "loaded"},
    {"name": "big-lama", "architecture": "lama", "state": "missing"},
    {"name": "lama", "architecture": "lama", "state": "available"},
    {"bad": "entry"},
]}


def test_lama_entries_bundled_first_missing_last_pennet_left_out() -> None:
    names = [m.name for m in lama_entries(WELCOME)]
    assert names == ["lama", "studio-lama", "big-lama"]
    assert len(models_of(WELCOME)) == 4  # the malformed entry is skipped


def test_labels_and_usability() -> None:
    entries = lama_entries(WELCOME)
    assert [entry_label(m) for m in entries] == ["lama (bundled)", "studio-lama",
                                                 "big-lama: not on the server"]
    assert usable(entries, "studio-lama") and usable(entries, "lama")
    assert not usable(entries, "big-lama") and not usable(entries, "nope")


def test_fetch_hint_names_the_command_only_when_something_is_missing() -> None:
    hint = fetch_hint(lama_entries(WELCOME))
    assert "inpaintd weights fetch big-lama" in hint and "without a restart" in hint
    assert fetch_hint(lama_entries({"models": WELCOME["models"][:2]})) == ""
    assert lama_entries({}) == []


def test_a_real_servers_catalog_lists_big_lama_as_missing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from inpaintd.server.serving.service import ModelCatalog

    monkeypatch.setenv("INPAINTD_HOME", str(tmp_path))
    entries = lama_entries({"models": ModelCatalog(lambda: set()).models()})
    by_name = {m.name: m for m in entries}
    assert by_name["big-lama"].missing and not by_name["lama"].missing
    assert "inpaintd weights fetch big-lama" in fetch_hint(entries)
