"""``import slmops`` (and the CLI's module tree) must not pull in heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "onnxruntime", "onnxruntime_genai", "llama_cpp", "peft", "pyarrow", "ray", "boto3", "botocore", "s3fs", "moto")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_slmops_is_light() -> None:
    assert _loaded_after("import slmops, slmops.store, slmops.stage.runner, slmops.data, slmops.models, slmops.runtimes") == []


def test_scale_modules_import_no_ray_or_boto3() -> None:
    """The remote, the Ray executor and the sharded teacher load ray/boto3 only when they run."""
    code = ("import slmops.store.sync, slmops.store.objects, slmops.store.remotes, slmops.pipeline.ray_exec, "
            "slmops.pipeline.ray_worker, slmops.stage.shards, slmops.distill.sharded, slmops.evaluate.sharded, slmops.cli.store")
    assert _loaded_after(code) == []


def test_cli_help_and_stage_registry_are_light() -> None:
    code = "from slmops.cli.main import app\nfrom slmops.stage import all_stages\nall_stages()"
    assert _loaded_after(code) == []


def test_missing_extra_names_the_extra() -> None:
    import pytest

    from slmops._optional import require
    from slmops.errors import MissingDependency

    with pytest.raises(MissingDependency) as exc:
        require("surely_not_installed_pkg", extra="onnx")
    assert "pip install 'slmops[onnx]'" in exc.value.message
