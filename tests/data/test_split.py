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
