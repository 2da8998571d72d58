"""judgecal label-next and judgecal estimate --design, end to end on a small judged file:
the rows for annotators with their inclusion probabilities, the design beside them, the
estimate from their labels, and each refusal in one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judgecal.cli import main
from judgecal.stats.active import read_design
from judgecal.stats.estimate import estimate_from_design
from judgecal.tasks.registry import resolve_task
from tests.conftest import write_jsonl
from tests.helpers import recorded_rows

RELEVANCE = resolve_task("relevance").spec


@pytest.fixture
def judged(tmp_path: Path) -> dict[str, Path | dict[str, bool]]:
    """240 rows in 12 groups, judged as a selective judge would write them: P(true) from
    the recorded verdicts, abstaining where 0.3 <= P < 0.6; the people's labels kept apart."""
    rows, verdicts, truth = [], [], {}
    for row in recorded_rows(n_groups=12, per_group=20).rows:
        record = row.to_record()
        truth[row.id] = record.pop("label")
        rows.append(record)
        p = 0.8 if row.reference_judges["strict"] else 0.45 if row.reference_judges["loose"] else 0.1
        line = {"id": row.id, "verdict": p >= 0.5, "probability": p, "judge": "j"}
        if 0.3 <= p < 0.6:
            line = {"id": row.id, "verdict": None, "abstained": True, "probability": p, "judge": "j"}
        verdicts.append(line)
    return {
        "rows": write_jsonl(tmp_path / "rows.jsonl", rows),
        "verdicts": write_jsonl(tmp_path / "verdicts.jsonl", verdicts),
        "truth": truth,
    }


def label_next(judged: dict, output: Path, *extra: str) -> int:
    argv = ["label-next", "--task", "relevance", "--verdicts", str(judged["verdicts"]), "--rows", str(judged["rows"])]
    return main([*argv, "--budget", "40", "--output", str(output), *extra])


def annotate(drawn: Path, truth: dict[str, bool], out: Path, *, skip: int = 0, extra: list[dict] = ()) -> Path:
    """What annotators return: the drawn rows with their label filled in (``skip`` left out)."""
    lines = [json.loads(text) for text in drawn.read_text().splitlines()][skip:]
    return write_jsonl(out, [{**line, "label": truth[line["id"]]} for line in lines] + list(extra))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    [line] = capsys.readouterr().err.strip().splitlines()
    return line


def test_label_next_writes_the_rows_and_design_and_estimate_uses_them(
    judged: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "next.jsonl"
    assert label_next(judged, output, "--seed", "3") == 0
    assert "of 240 judged rows drawn by uncertainty sampling" in " ".join(capsys.readouterr().out.split())
    design = read_design(tmp_path / "next.design.json")
    drawn = [json.loads(text) for text in output.read_text().splitlines()]
    assert [line["id"] for line in drawn] == [row.id for row in design.drawn]
    assert {(line["id"], line["inclusion_probability"]) for line in drawn} == {
        (row.id, row.inclusion_probability) for row in design.drawn
    }
    first = drawn[0]
    assert first["label"] is None and {"group", "prompt", "attribute", "reference_judges"} <= set(first)
    assert (design.strategy, design.seed, design.budget, design.mix, design.rows) == ("uncertainty", 3, 40, 0.2, 240)
    assert design.source_digest.startswith("sha256:") and abs(design.expected_labels - 40) < 1e-6

    labels = annotate(output, judged["truth"], tmp_path / "labels.jsonl")
    argv = ["estimate", "--task", "relevance", "--verdicts", str(judged["verdicts"]), "--labels", str(labels)]
    assert main([*argv, "--design", str(tmp_path / "next.design.json")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "active inference" in out and f"from {len(drawn)} labels" in out
    result = estimate_from_design(
        RELEVANCE, judged["verdicts"], labels, design, design_path=tmp_path / "next.design.json"
    )
    assert result.active.rows == 240 and result.labels == len(drawn) and result.judge_signal == "probability"


def test_a_drawn_row_left_unlabelled_is_refused_listing_its_id(
    judged: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "next.jsonl"
    assert label_next(judged, output) == 0
    missing = json.loads(output.read_text().splitlines()[0])["id"]
    labels = annotate(output, judged["truth"], tmp_path / "labels.jsonl", skip=1)
    capsys.readouterr()
    argv = ["estimate", "--task", "relevance", "--verdicts", str(judged["verdicts"]), "--labels", str(labels)]
    assert main([*argv, "--design", str(tmp_path / "next.design.json")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {labels}: field 'id': 1 rows the design drew have no label: {missing};")


def test_labelled_rows_the_design_did_not_draw_are_left_out_with_a_note(
    judged: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "next.jsonl"
    assert label_next(judged, output) == 0
    drawn = {json.loads(text)["id"] for text in output.read_text().splitlines()}
    stray_id = next(row_id for row_id in judged["truth"] if row_id not in drawn)
    stray = {"id": stray_id, "group": "g", "prompt": "p", "attribute": "a", "label": True}
    labels = annotate(output, judged["truth"], tmp_path / "labels.jsonl", extra=[stray])
    capsys.readouterr()
    argv = ["estimate", "--task", "relevance", "--verdicts", str(judged["verdicts"]), "--labels", str(labels)]
    assert main([*argv, "--design", str(tmp_path / "next.design.json")]) == 0
    captured = capsys.readouterr()
    assert f"note: 1 labelled rows the design did not draw were left out ({stray_id})" in captured.err
    assert f"from {len(drawn)} labels" in " ".join(captured.out.split())


def test_rows_labelled_already_are_not_drawn_and_count_with_certainty(judged: dict, tmp_path: Path) -> None:
    truth = judged["truth"]
    before = [
        {"id": row_id, "group": "g", "prompt": "p", "attribute": "a", "label": truth[row_id]}
        for row_id in list(truth)[:30]
    ]
    labelled = write_jsonl(tmp_path / "before.jsonl", before)
    output = tmp_path / "next.jsonl"
    assert label_next(judged, output, "--labelled", str(labelled), "--budget", "60") == 0
    design = read_design(tmp_path / "next.design.json")
    assert design.labelled_before == sorted(line["id"] for line in before)
    assert not {row.id for row in design.drawn} & set(design.labelled_before)
    new = annotate(output, truth, tmp_path / "new.jsonl")
    with pytest.raises(Exception, match="30 rows the design drew have no label"):
        estimate_from_design(RELEVANCE, judged["verdicts"], new, design, design_path=tmp_path / "d.json")
    merged = write_jsonl(tmp_path / "all.jsonl", before + [json.loads(text) for text in new.read_text().splitlines()])
    result = estimate_from_design(RELEVANCE, judged["verdicts"], merged, design, design_path=tmp_path / "d.json")
    assert result.labels == 30 + len(design.drawn)


def test_the_abstention_queue_is_drawn_from_without_the_rows_file(tmp_path: Path) -> None:
    queue = write_jsonl(
        tmp_path / "verdicts.queue.jsonl",
        [
            {
                "id": f"r{i}",
                "group": f"g{i % 4}",
                "prompt": "p",
                "attribute": f"a{i}",
                "label": None,
                "abstention": {"judge": "j", "line": i + 1, "probability": 0.2 + i / 100, "probabilities": None},
            }
            for i in range(50)
        ],
    )
    output = tmp_path / "next.jsonl"
    argv = ["label-next", "--task", "relevance", "--verdicts", str(queue), "--budget", "10"]
    assert main([*argv, "--strategy", "stratified", "--output", str(output)]) == 0
    lines = [json.loads(text) for text in output.read_text().splitlines()]
    assert lines and all(line["attribute"].startswith("a") and line["inclusion_probability"] for line in lines)
    assert not any("abstention" in line for line in lines)  # the judge's probability is not shown to annotators
    pi = {row.id: row.inclusion_probability for row in read_design(tmp_path / "next.design.json").drawn}
    assert len(set(pi.values())) > 1  # the probabilities under "abstention" were read: they set π


def test_a_second_draw_never_overwrites_the_first(
    judged: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "next.jsonl"
    assert label_next(judged, output) == 0
    before = (tmp_path / "next.design.json").read_text()
    capsys.readouterr()
    assert label_next(judged, output, "--seed", "5") == 2
    assert one_error_line(capsys) == f"error: {output} exists; choose another --output (nothing was overwritten)"
    assert (tmp_path / "next.design.json").read_text() == before


def test_an_estimate_from_another_judged_file_than_the_one_drawn_from_is_refused(
    judged: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "next.jsonl"
    assert label_next(judged, output) == 0
    labels = annotate(output, judged["truth"], tmp_path / "labels.jsonl")
    with judged["verdicts"].open("a") as handle:  # judged on after the draw
        handle.write(json.dumps({"id": "late", "verdict": True, "probability": 0.9}) + "\n")
    capsys.readouterr()
    argv = ["estimate", "--task", "relevance", "--verdicts", str(judged["verdicts"]), "--labels", str(labels)]
    assert main([*argv, "--design", str(tmp_path / "next.design.json")]) == 2
    assert one_error_line(capsys).startswith(
        f"error: {tmp_path / 'next.design.json'}: field 'source_digest': {judged['verdicts']} is not the file"
    )


@pytest.mark.parametrize(
    ("line", "extra", "located"),
    [
        ({"id": "g0-0", "verdict": True, "probability": 1.5}, [], "verdicts.jsonl:1: field 'probability'"),
        ({"id": "g0-0", "verdict": None, "probability": 0.5}, [], "verdicts.jsonl:1: field 'verdict'"),
        ({"id": "g0-0", "verdict": True}, [], "verdicts.jsonl:1: field 'probability': the uncertainty strategy"),
        ({"id": "g0-0", "verdict": True, "probability": 0.5}, ["--no-rows"], "verdicts.jsonl:1: field 'id': no input"),
    ],
)
def test_bad_judged_rows_are_refused_in_one_line_naming_file_line_and_field(
    judged: dict, tmp_path: Path, line: dict, extra: list[str], located: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = judged["verdicts"].read_text().splitlines()
    judged["verdicts"].write_text("\n".join([json.dumps(line), *lines[1:]]) + "\n")
    if extra == ["--no-rows"]:
        judged = {**judged, "rows": None}
    argv = ["label-next", "--task", "relevance", "--verdicts", str(judged["verdicts"]), "--budget", "20"]
    argv += ["--rows", str(judged["rows"])] if judged["rows"] else []
    assert main([*argv, "--output", str(tmp_path / "next.jsonl")]) == 2
    assert located in one_error_line(capsys)
    assert not (tmp_path / "next.jsonl").exists()


def test_a_bad_design_file_is_refused_naming_its_field(
    judged: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "next.jsonl"
    assert label_next(judged, output) == 0
    design_file = tmp_path / "next.design.json"
    design = json.loads(design_file.read_text())
    design["strategy"] = "hunch"
    design_file.write_text(json.dumps(design))
    capsys.readouterr()
    argv = ["estimate", "--task", "relevance", "--verdicts", str(judged["verdicts"]), "--labels", str(output)]
    assert main([*argv, "--design", str(design_file)]) == 2
    assert one_error_line(capsys).startswith(f"error: {design_file}: field 'strategy': Input should be")


def test_merge_joins_the_new_labels_to_the_old_and_refuses_a_repeated_id(
    judged: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from judgecal.data.rows import load_rows

    truth = judged["truth"]
    old_ids = list(truth)[:30]
    old = write_jsonl(
        tmp_path / "old.jsonl",
        [{"id": i, "group": "g", "prompt": "p", "attribute": "a", "label": truth[i]} for i in old_ids],
    )
    output = tmp_path / "next.jsonl"
    assert label_next(judged, output, "--labelled", str(old)) == 0
    new = annotate(output, truth, tmp_path / "new.jsonl")
    merged = tmp_path / "all.jsonl"
    argv = ["data", "merge", str(old), str(new), "--task", "relevance", "--output", str(merged)]
    assert main(argv) == 0
    rows = load_rows(merged, RELEVANCE).rows
    drawn = len(output.read_text().splitlines())
    assert len(rows) == 30 + drawn and rows[-1].reference_judges  # the recorded verdicts came along
    said = "".join(capsys.readouterr().out.split())  # rich wraps long paths wherever it likes
    assert "".join(f"{30 + drawn} labelled rows written to {merged}".split()) in said

    again = tmp_path / "twice.jsonl"
    assert main(["data", "merge", str(old), str(new), str(new), "--task", "relevance", "--output", str(again)]) == 2
    first = json.loads(new.read_text().splitlines()[0])["id"]
    assert one_error_line(capsys) == (
        f"error: {new}:1: field 'id': id {first!r} is labelled already in {new}:1; ids must not repeat: keep one of "
        "the two rows"
    )
    assert not again.exists()
    unlabelled = tmp_path / "unlabelled.jsonl"
    assert main(["data", "merge", str(old), str(output), "--task", "relevance", "--output", str(unlabelled)]) == 2
    assert one_error_line(capsys) == f"error: {output}:1: field 'label': missing required field"
