"""The format registry (``slmops.formats``): the built-in formats, what they declare, and detection from files."""

from __future__ import annotations

from pathlib import Path

from slmops import formats
from slmops._optional import EXTRAS
from slmops.runtimes import available_runtimes, runtime_spec


def test_every_format_names_a_known_extra_and_its_libraries() -> None:
    dists = {d for ds in EXTRAS.values() for d in ds}
    for f in formats.all_formats():
        assert f.extra in EXTRAS, f.name
        assert set(f.libs) <= dists, f.name
        assert f.measure in formats.MEASURES and f.title
    assert formats.model_kinds() == ("model", "onnx", "gguf")
    assert formats.runnable_kinds() == ("model", "onnx", "gguf", "adapter")
    assert formats.names(served=True) == ("hf-safetensors", "ort-genai", "gguf", "foundry-local")
    assert {"torch", "onnxruntime-genai", "llama-cpp-python"} <= set(formats.tracked_libs())


def test_runtimes_are_declared_for_formats_and_adapters() -> None:
    assert formats.runtimes_for("hf-safetensors") == ("torch",)
    assert formats.runtimes_for("gguf") == ("llamacpp",)
    assert formats.runtimes_for("foundry-local") == ("ort-genai",)
    for name in available_runtimes():
        spec = runtime_spec(name)
        assert spec.extra in EXTRAS and spec.formats
        for a in spec.capabilities.adapter_formats:  # every adapter format a runtime takes is a registered adapter format
            assert formats.get(a) is not None and not formats.get(a).served  # type: ignore[union-attr]
    assert formats.by_target("gguf").name == "gguf" and formats.by_target("onnx").name == "ort-genai"  # type: ignore[union-attr]
    assert formats.by_target("safetensors") is None


def test_detection_from_marker_files(tmp_path: Path) -> None:
    hf, ort, gguf_dir = tmp_path / "hf", tmp_path / "ort", tmp_path / "g"
    for d in (hf, ort, gguf_dir):
        d.mkdir()
    (hf / "config.json").write_text("{}")
    (ort / "genai_config.json").write_text("{}")
    (ort / "config.json").write_text("{}")  # a generic marker loses to a specific one
    (gguf_dir / "model.gguf").write_bytes(b"GGUF")
    assert formats.detect(hf) == "hf-safetensors" and formats.detect(ort) == "ort-genai" and formats.detect(gguf_dir) == "gguf"
    assert formats.detect(gguf_dir / "model.gguf") == "gguf"
    assert formats.detect(hf / "config.json") is None  # a file is matched by patterns only


def test_doctor_reports_the_formats() -> None:
    from slmops.sysinfo import machine_report

    r = machine_report()
    assert set(r["formats"]) >= set(formats.names()) and r["formats"]["gguf"]["extra"] == "gguf"
