"""Bundles saved by an earlier judgecal load and give the verdicts they gave then.

``tests/export/golden/`` holds one bundle per kind of judge, each beside the rows it
judged and the verdicts it gave when it was saved (``golden/build.py`` wrote them). How a
judge is rebuilt from its state may change; what a saved judge answers may not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import judgecal
from judgecal.data.rows import LabeledRow

GOLDEN = Path(__file__).with_name("golden")
SAVED = sorted(folder.name for folder in GOLDEN.iterdir() if (folder / "judge.json").exists())
# These call the embedded model to judge.
ON_THE_MODEL = {name for name in SAVED if name.startswith("embedded-")}


def test_every_kind_of_judge_has_a_saved_bundle() -> None:
    kinds = {json.loads((GOLDEN / name / "judge.json").read_text())["judge"]["kind"] for name in SAVED}
    assert {"verifier", "threshold", "stacked", "program", "order_swap"} <= kinds


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ON_THE_MODEL else n for n in SAVED])
def test_a_saved_bundle_gives_the_verdicts_it_gave_when_saved(name: str) -> None:
    expected = json.loads((GOLDEN / name / "expected.json").read_text())
    judge = judgecal.load_judge(GOLDEN / name)
    rows = [
        LabeledRow(id=r["id"], group="-", inputs=r["inputs"], label=None, reference_judges=r["reference_judges"])
        for r in expected["rows"]
    ]
    # What was rebuilt is what was saved, down to each learned number.
    assert judge.state() == json.loads((GOLDEN / name / "judge.json").read_text())["judge"]
    verdicts = judge.predict(rows)
    assert [v.label for v in verdicts] == [e["label"] for e in expected["verdicts"]]
    for verdict, saved in zip(verdicts, expected["verdicts"], strict=True):
        assert verdict.confidence == pytest.approx(saved["confidence"], abs=1e-9)
        assert verdict.error == saved["error"]
        got, want = verdict.probabilities or {}, saved["probabilities"] or {}
        assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], abs=1e-9) for k in want)
