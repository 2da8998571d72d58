"""Sampling a part of the split down to a cap, across its groups."""

from __future__ import annotations

import pytest

from judgecal.data.split import sample_across_groups
from tests.helpers import recorded_rows


def test_a_cap_keeps_that_many_rows_with_every_group_represented() -> None:
    rows = list(recorded_rows(n_groups=6).rows)
    kept = sample_across_groups(rows, 12, seed=0)
    assert len(kept) == 12 and {row.group for row in kept} == {row.group for row in rows}
    assert kept == sorted(kept, key=rows.index)  # in file order


@pytest.mark.parametrize("cap", [None, 60, 61, 1000])
def test_no_cap_or_one_at_least_as_large_as_the_rows_keeps_them_all(cap: int | None) -> None:
    rows = recorded_rows(n_groups=6).rows  # 60 rows
    assert sample_across_groups(rows, cap, seed=0) == list(rows)


def test_calibration_groups_are_a_part_of_their_own_and_move_no_other_part() -> None:
    from judgecal.data.split import SplitSpec, split_by_group

    dataset = recorded_rows(n_groups=20)
    without = split_by_group(dataset, SplitSpec(gate=0.1))
    split = split_by_group(dataset, SplitSpec(gate=0.1, calibration=0.2))
    assert split.calibration is not None and split.sizes["calibration"] == 40  # 4 of 20 groups
    groups = {name: {row.group for row in part.rows} for name, part in split.parts().items()}
    assert all(not (groups[a] & groups[b]) for a in groups for b in groups if a < b)
    for name in ("test", "dev", "gate"):
        assert groups[name] == {row.group for row in without.parts()[name].rows}
    assert groups["calibration"] <= {row.group for row in without.train.rows}
    # No calibration share: the split, and its fingerprint, as before there was one.
    assert split_by_group(dataset, SplitSpec(gate=0.1, calibration=0.0)).fingerprint == without.fingerprint
