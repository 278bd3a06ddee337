"""One version: meson.build's project() version is tpar.__version__ and
what `tpar --version` prints (they were kept apart by hand)."""
import os
import re
import subprocess
from pathlib import Path

import tpar

ROOT = Path(__file__).resolve().parents[2]


def meson_version():
    text = (ROOT / "meson.build").read_text()
    return re.search(r"project\([^)]*?version\s*:\s*'([^']+)'", text, re.S).group(1)


def test_package_version_is_mesons():
    assert tpar.__version__ == meson_version()


def test_cli_version_is_mesons():
    exe = Path(os.environ.get("TPAR_BUILD_DIR", ROOT / "build")) / "cmd" / "tpar"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert meson_version() in out.stdout + out.stderr
