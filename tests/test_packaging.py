"""The wheel a user installs with plain pip holds every module of the package."""

from __future__ import annotations

import re
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


# The name judgecal on PyPI belongs to another project: "pip install judgecal" or
# "judgecal[extra]" by bare name would install that one.
INDEX_INSTALL = re.compile(r"pip install\s+[\"']?judgecal(?![\w.-])|[\"']judgecal\[")
TEXT_FILES = ("README.md", "SECURITY.md", "CONTRIBUTING.md", "ARCHITECTURE.md", "docs", "experiments", "judgecal")
TEXT_FILES += ("signatures", "tests")


def test_nothing_tells_a_user_to_install_judgecal_by_name_from_the_package_index() -> None:
    found = []
    for entry in TEXT_FILES:
        paths = [REPO / entry] if (REPO / entry).is_file() else sorted((REPO / entry).rglob("*"))
        for path in paths:
            if path.suffix not in (".md", ".py", ".toml") or path == Path(__file__).resolve():
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if INDEX_INSTALL.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "install from a clone (pip install -e .[extra], make install):\n" + "\n".join(found)
