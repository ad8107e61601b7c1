"""The CLI under careless or hostile input, through real ``python -m slmops`` processes (issue 17, items 8 and 9).

Usage errors are usage messages with exit 2; text from users (references, CSV headers, labels)
prints literally — rich markup is not interpreted and ``:x:`` is not an emoji — and a version beyond
64 bits is a one-line error, never a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slmops.errors import RefError, StoreError
from slmops.store import ModelRef, Store


def slmops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slmops", *args], capture_output=True, text=True, timeout=120, check=False)


def test_usage_errors_are_usage_messages_with_exit_2() -> None:
    cases = {
        ("models", "import", "./somewhere"): "Missing option '--name'",
        ("no-such-command",): "No such command 'no-such-command'",
        ("generate", "bot", "hi", "--max-tokens", "abc"): "Invalid value for '--max-tokens'",
        ("models", "ls", "--no-such-flag"): "No such option: --no-such-flag",
        ("models", "import"): "Missing argument",
    }
    for args, says in cases.items():
        r = slmops(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and "Usage:" in r.stderr and says in r.stderr, (args, r.stderr)
        assert r.stdout == ""


def test_user_text_prints_literally(tmp_path: Path) -> None:
    r = slmops("models", "show", "bot[/red]")  # once a rich MarkupError traceback from the error printer
    assert r.returncode == 1 and r.stderr.strip() == "error: no such file or folder: bot[/red]: check the path", r.stderr
    r = slmops("models", "show", "bot[red]")  # once printed as 'bot': the tag was swallowed
    assert r.returncode == 1 and r.stderr.startswith("error: 'bot[red]' is not a valid reference"), r.stderr

    (tmp_path / "bad.csv").write_text("input,[/bold]\nhello,world\n")
    r = slmops("data", "import", str(tmp_path / "bad.csv"), "--name", "bad")
    assert r.returncode == 1 and "[/bold]: unknown field" in r.stderr and "Traceback" not in r.stderr, r.stderr

    (tmp_path / "labels.csv").write_text("input,output,label\nhello [/bold] :x:,world [/red],a[/b]\nfoo,bar,:x:\n")
    assert slmops("data", "import", str(tmp_path / "labels.csv"), "--name", "labels").returncode == 0
    r = slmops("data", "inspect", "labels")
    assert r.returncode == 0, r.stderr
    assert "':x:': 1" in r.stdout and "'a[/b]': 1" in r.stdout and "\u274c" not in r.stdout


def test_version_beyond_64_bits_is_a_clean_error(store: Store) -> None:
    with store.staging() as tmp:
        (tmp / "f").write_text("x")
        store.commit(tmp, kind="dataset", format="x", name="bot")
    huge = 99999999999999999999
    with pytest.raises(RefError, match="is not a valid reference: version 99999999999999999999 is beyond any stored version"):
        ModelRef.parse(f"bot:{huge}")
    with pytest.raises(StoreError, match=f"bot:{huge} is not a version"):
        store.lookup("bot", version=huge)
    with pytest.raises(StoreError, match=f"bot:{huge} is not a version"):
        store.set_alias("bot", "prod", huge)
    assert ModelRef.parse(f"bot:{2**63 - 1}").version == 2**63 - 1  # the largest SQLite holds is still a reference

    for args in (("models", "show", f"bot:{huge}"), ("models", "alias", "bot@prod", str(huge)), ("models", "alias", "bot@prod", f"bot:{huge}")):
        r = slmops(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and str(huge) in lines[0], (args, r.stderr)
