"""Facts about this machine and installation, for ``slmops doctor`` and ``profile detect``.

Nothing here imports a heavy library: versions come from package metadata, CPU features from
``/proc/cpuinfo`` (or ``sysctl`` on macOS).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from slmops import __version__, formats
from slmops._optional import EXTRAS, installed_version
from slmops.settings import slmops_home

_FEATURES = {
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx",
    "neon": "neon",
    "asimd": "neon",
    "sve": "sve",
}


def cpu_features() -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
            elif key == "model name" and value.strip():
                model = value.strip()
    elif sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=False)
            model = out.stdout.strip() or model
        except OSError:
            pass
        if platform.machine() == "arm64":
            flags = {"neon", "asimd"}
    found = sorted({name for flag, name in _FEATURES.items() if flag in flags})
    return {"model": model, "arch": platform.machine(), "features": found}


def memory_bytes() -> dict[str, int]:
    import psutil

    vm = psutil.virtual_memory()
    return {"total": int(vm.total), "available": int(vm.available)}


def accelerators() -> list[str]:
    found = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False)
            found += [f"cuda: {line.strip()}" for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return found


def machine_report() -> dict[str, Any]:
    home = slmops_home()
    probe = home if home.exists() else home.parent
    while not probe.exists():
        probe = probe.parent
    extras = {
        extra: {dist: installed_version(dist) for dist in dists}
        for extra, dists in EXTRAS.items()
    }
    complete = {extra: all(v is not None for v in d.values()) for extra, d in extras.items()}
    return {
        "slmops": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "memory": memory_bytes(),
        "cpu": cpu_features(),
        "accelerators": accelerators(),
        "extras": extras,
        "extras_complete": complete,
        "formats": {f.name: {"kind": f.kind, "measure": f.measure, "extra": f.extra, "extra_installed": complete.get(f.extra, True) if f.extra else True}
                    for f in formats.all_formats()},
        "home": str(home),
        "home_exists": home.exists(),
        "disk_free_bytes": shutil.disk_usage(probe).free,
    }
