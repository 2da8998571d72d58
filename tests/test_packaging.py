"""The wheel a user installs with plain pip holds every module of the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_module_and_signature(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(REPO),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = tmp_path.glob("judgecal-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"judgecal/{p.relative_to(REPO / 'judgecal').as_posix()}" for p in (REPO / "judgecal").rglob("*.py")}
    expected |= {f"judgecal/signatures/{p.name}" for p in (REPO / "signatures").glob("*.py")}
    missing = sorted(expected - shipped)
    assert not missing, f"{len(missing)} modules are missing from the wheel, e.g. {missing[:5]}"
