"""Importers: each source format, from a small fixture written for the test, to valid rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judgecal.cli import main
from judgecal.data.importers import import_rows
from judgecal.data.rows import DataError, load_rows
from judgecal.tasks.registry import resolve_task

RELEVANCE = resolve_task("relevance").spec
PAIRWISE = resolve_task("pairwise").spec


def test_annotation_tool_ground_truth_files_become_relevance_rows(tmp_path: Path) -> None:
    item = {
        "user_id": "u1",
        "prompt_id": "u1_20",
        "prompt_text": "How do I wear a long coat?",
        "mode": "gt_attributes",
        "profile_attributes": [
            {"attribute": "The user is into fashion.", "reason": "asked about outfits", "ground_truth": True},
            {"attribute": "The user owns a cat.", "reason": "mentioned a cat", "ground_truth": False},
        ],
        "model": "m1",
        "response": "...",
    }
    path = tmp_path / "eval_results_task5_gt_attributes_m1.jsonl"
    # The same items appear once per evaluated model; they are imported once.
    path.write_text(json.dumps(item) + "\n" + json.dumps({**item, "model": "m2"}) + "\n")
    rows = import_rows("annotation-tool", path, RELEVANCE)
    assert [(r["id"], r["label"]) for r in rows] == [("u1_20-a0", True), ("u1_20-a1", False)]
    assert rows[0]["prompt"] == "How do I wear a long coat?" and rows[0]["user_id"] == "u1"


def test_annotation_tool_aggregated_rows_keep_the_soft_label(tmp_path: Path) -> None:
    path = tmp_path / "task3_relevance_clf.jsonl"
    path.write_text(
        json.dumps(
            {
                "prompt_index": 0,
                "sample_index": 0,
                "attribute": "Likes tents.",
                "prompt_text": "Can I sleep in a tent alone?",
                "label": 1,
                "split": "train",
                "n_annotators": 4,
                "human_yes_rate": 0.75,
            }
        )
        + "\n"
    )
    [row] = import_rows("annotation-tool", path, RELEVANCE)
    assert row["label"] is True and row["human_yes_rate"] == 0.75 and row["group"] == "prompt-0"


def test_pandalm_testset_majority_and_annotators(tmp_path: Path) -> None:
    path = tmp_path / "testset-v1.json"
    path.write_text(
        '[{"idx": 0, "motivation_app": "Grammarly", "cmp_key": "bloom-7b_llama-7b", "instruction": "Shorten it.",'
        ' "input": NaN, "response1": "Short.", "response2": true, "annotator1": 2, "annotator2": 2, "annotator3": 0},'
        ' {"idx": 1, "motivation_app": "x", "cmp_key": "bloom-7b_opt-7b", "instruction": "Fix grammar.",'
        ' "input": "me go home", "response1": "I go home.", "response2": "I went home.",'
        ' "annotator1": 0, "annotator2": 1, "annotator3": 2}]'
    )
    rows = import_rows("pandalm", path, PAIRWISE)
    assert rows[0]["label"] == "B" and rows[0]["annotator_labels"] == ["B", "B", "tie"]
    assert rows[0]["prompt"] == "Shorten it." and rows[0]["response_b"] == "true"
    assert rows[1]["label"] == "tie" and rows[1]["prompt"] == "Fix grammar.\n\nme go home"


def test_pandalm_rows_are_grouped_by_instruction_not_by_system_pair(tmp_path: Path) -> None:
    """One instruction is answered by up to ten system pairs, and those rows are not
    independent; the ten system pairs would also be too few groups to resample."""

    def record(idx: int, pair: str, instruction: str) -> dict:
        votes = {"annotator1": 1, "annotator2": 1, "annotator3": 2}
        texts = {"response1": "One.", "response2": "Two."}
        return {"idx": idx, "cmp_key": pair, "instruction": instruction, "input": "", **texts, **votes}

    path = tmp_path / "testset-v1.json"
    path.write_text(
        json.dumps(
            [
                record(0, "bloom-7b_llama-7b", "Shorten it."),
                record(1, "opt-7b_pythia-6.9b", "Shorten it."),
                record(2, "bloom-7b_llama-7b", "Fix grammar."),
            ]
        )
    )
    rows = import_rows("pandalm", path, PAIRWISE)
    assert rows[0]["group"] == rows[1]["group"] != rows[2]["group"]
    assert [row["system_pair"] for row in rows] == ["bloom-7b_llama-7b", "opt-7b_pythia-6.9b", "bloom-7b_llama-7b"]


def test_llmbar_labels_one_and_two(tmp_path: Path) -> None:
    folder = tmp_path / "Natural"
    folder.mkdir()
    path = folder / "dataset.json"
    path.write_text(
        json.dumps(
            [
                {"input": "Say hi.", "output_1": "Hi!", "output_2": "No.", "label": 1},
                {"input": "Count to 2.", "output_1": "1, 3", "output_2": "1, 2", "label": 2},
            ]
        )
    )
    rows = import_rows("llmbar", path, PAIRWISE)
    assert [r["label"] for r in rows] == ["A", "B"]
    assert rows[0]["id"] == "llmbar-Natural-0" and rows[0]["subset"] == "Natural"


def test_mt_bench_votes_are_merged_per_question_pair_and_turn(tmp_path: Path) -> None:
    def conversation(model: str) -> list[dict]:
        return [
            {"role": "user", "content": "Write a haiku."},
            {"role": "assistant", "content": f"{model} haiku"},
            {"role": "user", "content": "Now in French."},
            {"role": "assistant", "content": f"{model} french"},
        ]

    records = [
        {
            "question_id": 81,
            "model_a": "vicuna",
            "model_b": "alpaca",
            "winner": "model_a",
            "judge": "expert_1",
            "turn": 1,
            "conversation_a": conversation("vicuna"),
            "conversation_b": conversation("alpaca"),
        },
        {
            "question_id": 81,
            "model_a": "alpaca",
            "model_b": "vicuna",
            "winner": "model_a",
            "judge": "author_2",
            "turn": 1,
            "conversation_a": conversation("alpaca"),
            "conversation_b": conversation("vicuna"),
        },
        {
            "question_id": 81,
            "model_a": "alpaca",
            "model_b": "vicuna",
            "winner": "tie (inconsistent)",
            "judge": "expert_3",
            "turn": 2,
            "conversation_a": conversation("alpaca"),
            "conversation_b": conversation("vicuna"),
        },
    ]
    path = tmp_path / "human.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = import_rows("mt-bench", path, PAIRWISE)
    first, second = rows
    # alpaca < vicuna: alpaca is A. Votes: vicuna (B) by expert_1, alpaca (A) by author_2.
    assert first["response_a"] == "alpaca haiku" and first["annotator_labels"] == ["B", "A"]
    assert first["label"] == "tie" and first["group"] == "question-81"
    assert second["label"] == "tie" and "Now in French." in second["prompt"]
    assert second["response_b"] == "vicuna french"


def test_table_import_with_column_and_label_maps(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("qid,question,answer_1,answer_2,winner\nq1,Hi?,Hello,Go away,1\nq2,Bye?,Bye,Hi,0\n")
    rows = import_rows(
        "table",
        path,
        PAIRWISE,
        mapping={
            "id": "qid",
            "prompt": "question",
            "response_a": "answer_1",
            "response_b": "answer_2",
            "label": "winner",
        },
        label_map={"1": "A", "2": "B", "0": "tie"},
    )
    assert [(r["id"], r["label"]) for r in rows] == [("q1", "A"), ("q2", "tie")]


def test_bad_source_record_names_file_record_and_field(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps([{"input": "x", "output_1": "a", "output_2": "b", "label": 3}]))
    with pytest.raises(DataError, match=r"dataset.json:1: field 'label': expected 1 or 2, got 3"):
        import_rows("llmbar", path, PAIRWISE)


def test_import_command_writes_rows_that_load_and_never_overwrites(tmp_path: Path) -> None:
    source = tmp_path / "Natural" / "dataset.json"
    source.parent.mkdir()
    source.write_text(
        json.dumps([{"input": f"q{i}", "output_1": "a", "output_2": "b", "label": 1 + i % 2} for i in range(6)])
    )
    output = tmp_path / "rows.jsonl"
    assert main(["data", "import", "llmbar", str(source), "--output", str(output)]) == 0
    assert len(load_rows(output, PAIRWISE)) == 6
    assert main(["data", "import", "llmbar", str(source), "--output", str(output)]) == 2  # exists


def _evaluation_record(user: str, prompt_index: int, prompt: str) -> dict:
    """One record of the annotation tool's evaluation files: prompt_id is user × prompt."""
    return {
        "user_id": user,
        "prompt_id": f"{user}_{prompt_index}",
        "prompt_text": prompt,
        "profile_attributes": [
            {"attribute": f"{user} likes coats.", "ground_truth": True},
            {"attribute": f"{user} owns a cat.", "ground_truth": False},
        ],
    }


def test_annotation_tool_rows_of_one_prompt_share_a_group_across_users(tmp_path: Path) -> None:
    """The paper's file holds 41 prompts answered for 47 users (164 user × prompt pairs):
    rows of one prompt are not independent across users, so the default group is the prompt."""
    records = [
        _evaluation_record("u1", 25, "How to wear long coats?"),
        _evaluation_record("u2", 25, "How to wear long coats?"),
        _evaluation_record("u1", 3, "How do I calm an angry customer?"),
    ]
    path = tmp_path / "eval_results_task5_gt_attributes_m1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    by_prompt = import_rows("annotation-tool", path, RELEVANCE)
    groups = [row["group"] for row in by_prompt]
    assert groups[0] == groups[1] == groups[2] == groups[3] != groups[4] == groups[5]
    by_pair = import_rows("annotation-tool", path, RELEVANCE, group_by="user-prompt")
    assert [row["group"] for row in by_pair] == ["u1_25"] * 2 + ["u2_25"] * 2 + ["u1_3"] * 2
    by_user = import_rows("annotation-tool", path, RELEVANCE, group_by="user")
    assert [row["group"] for row in by_user] == ["u1", "u1", "u2", "u2", "u1", "u1"]


def test_import_command_takes_group_by_for_the_annotation_tool_only(tmp_path: Path, capsys) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(_evaluation_record("u1", 25, "How to wear long coats?")) + "\n")
    output = tmp_path / "rows.jsonl"
    assert main(["data", "import", "annotation-tool", str(path), "--output", str(output), "--group-by", "user"]) == 0
    assert {row.group for row in load_rows(output, RELEVANCE)} == {"u1"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(["data", "import", "annotation-tool", str(path), "--output", str(tmp_path / "o"), "--group-by", "row"])
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: argument --group-by: invalid choice: 'row' (choose from ")
    assert line.count("--group-by") == 1 and "usage:" not in line


@pytest.mark.parametrize("name", ["PandaLM", "pandalm", "MT-Bench", "mt_bench", "LLMBar"])
def test_import_format_names_are_case_insensitive_and_need_no_task(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.json"
    path.write_text("[]")
    assert main(["data", "import", name, str(path), "--output", str(tmp_path / "rows.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "--task is needed" not in error and "no records to import" in error


def test_an_unknown_import_format_is_one_line_naming_the_formats(tmp_path: Path, capsys) -> None:
    path = tmp_path / "x.json"
    path.write_text("[]")
    assert main(["data", "import", "alpacaeval", str(path), "--output", str(tmp_path / "rows.jsonl")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "unknown format 'alpacaeval'" in line and "annotation-tool, pandalm" in line
