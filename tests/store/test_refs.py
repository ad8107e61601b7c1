"""ModelRef parsing and resolution of every scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.errors import RefError
from slmops.store import ModelRef, Store, resolve


@pytest.mark.parametrize(
    ("text", "scheme", "value", "version", "alias"),
    [
        ("support-bot", "name", "support-bot", None, None),
        ("support-bot:3", "name", "support-bot", 3, None),
        ("support-bot@prod", "name", "support-bot", None, "prod"),
        ("sha256:ABCDef12", "digest", "abcdef12", None, None),
        ("./models/x", "path", "./models/x", None, None),
        ("/abs/x", "path", "/abs/x", None, None),
        ("~/x", "path", "~/x", None, None),
        ("hf:Qwen/Qwen2.5-0.5B", "hf", "Qwen/Qwen2.5-0.5B", None, None),
    ],
)
def test_parse(text: str, scheme: str, value: str, version: int | None, alias: str | None) -> None:
    ref = ModelRef.parse(text)
    assert (ref.scheme, ref.value, ref.version, ref.alias) == (scheme, value, version, alias)
    if scheme != "digest":
        assert str(ref) == text


@pytest.mark.parametrize("bad", ["", "sha256:xyz", "hf:noslash", "bad name", "bot:three", "bot@"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(RefError):
        ModelRef.parse(bad)


def _put(store: Store, text: str, name: str | None = None):
    with store.staging() as tmp:
        (tmp / "f").write_text(text)
        return store.commit(tmp, kind="model", format="x", name=name)


def test_resolve_every_registry_scheme(store: Store) -> None:
    a = _put(store, "one", "bot")
    b = _put(store, "two", "bot")
    store.set_alias("bot", "prod", 1)
    assert resolve("bot", store).digest == b.digest
    assert resolve("bot:1", store).digest == a.digest
    assert resolve("bot@prod", store).digest == a.digest
    assert resolve(f"sha256:{a.digest[:10]}", store).digest == a.digest
    assert resolve(str(a.path), store).digest == a.digest  # an artifact dir resolves to itself
    with pytest.raises(RefError, match="is a model artifact"):
        resolve("bot", store, kind="dataset")
    with pytest.raises(RefError, match="no artifact"):
        resolve("nobody", store)


def test_path_without_importer_and_missing_path(store: Store, tmp_path: Path) -> None:
    with pytest.raises(RefError, match="import it first"):
        resolve(str(tmp_path), store)
    with pytest.raises(RefError, match="hf:org/name"):
        resolve("org/name", store)
