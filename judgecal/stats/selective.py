"""Where a judge may abstain, with a finite-sample guarantee on the verdicts it gives.

A selective judge answers only where its probability is far enough from a tie, and its
band is chosen by Learn then Test (MAPIE 1.6's risk controllers, Hoeffding-Bentkus
p-values) on calibration rows it was neither fitted nor selected on:

* Binary: "yes" where P(yes) >= hi, "no" where P(yes) < lo, abstain in between. The
  precision of "yes" depends on ``hi`` only and that of "no" on ``lo`` only, so each
  verdict is a family of tests of its own at delta / 2 (one
  ``BinaryClassificationController`` each, with Holm's procedure or a fixed sequence,
  most confident candidate first, within it). Every valid ``hi`` and every
  valid ``lo`` then hold together with probability >= 1 - delta, and the pair with the
  widest coverage on the calibration rows is taken.
* Several labels (pairwise A / B / tie): verdict k is given where it is the most likely
  label and P(k) >= t_k; A and B share one threshold (a judge stays symmetric when the
  responses are swapped), tested together in one ``MultiClassificationLTTController``
  family, every other label in a family of its own.

Candidate thresholds are fixed before the calibration rows are read: quantiles of the
judge's scores on other rows (its fitting rows). Rows of one prompt are not independent:
``groups = "design_effect"`` counts the rows a precision rests on through their design
effect (approximate, for rows of new prompts); ``"independent"`` takes them as independent
draws (finite-sample, for rows drawn like the calibration rows). MAPIE is imported inside
the functions that choose a band: applying a band needs numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from judgecal.stats.ltt import (
    Procedure,
    Tested,
    method_words,
    recorded_test,
    valid_binary_thresholds,
    valid_label_thresholds,
)

GroupsMode = Literal["design_effect", "independent"]

# Where candidate thresholds sit: quantiles of the scores of rows that are not calibration rows.
QUANTILES = (0.01, 0.025, *np.round(np.linspace(0.05, 0.95, 19), 3).tolist(), 0.975, 0.99)

# Without rows to place them, candidates on a fixed grid (still fixed before the calibration rows).
FIXED_GRID = tuple(np.round(np.linspace(0.05, 0.95, 19), 3).tolist())

GROUPS_WORDS = {
    "design_effect": (
        "approximately, for rows of new prompts (learn then test, prompts counted through their design effect)"
    ),
    "independent": "for rows drawn like the {rows} (learn then test, rows counted as independent draws)",
}

# Where a band's rows come from: a split of their own, or the out-of-fold scores of grouped cross-fitting.
SPLIT_SOURCE = "split:calibration"
CROSS_FIT_SOURCE = "cross-fit"


class Answer(BaseModel):
    """One verdict of a band: given where the score compares to the threshold as ``when``
    says; a threshold of ``None`` means the verdict is never given (``allow_never``)."""

    model_config = ConfigDict(frozen=True)

    verdict: str = Field(description="The verdict as spelled in JSON: 'true', 'false', 'A', 'tie'.")
    when: Literal[">=", "<"]
    threshold: float | None
    of: str = Field(description="The score compared: 'P(true)', or 'P(A), when the most likely'.")


class Band(BaseModel):
    model_config = ConfigDict(frozen=True)

    score: Literal["probability"] = "probability"
    answers: list[Answer]


class Guarantee(BaseModel):
    """The targets asked for, how they were tested, and the guarantee in words."""

    model_config = ConfigDict(frozen=True)

    precision: dict[str, float]
    delta: float
    groups: GroupsMode
    allow_never: bool
    procedure: Procedure | None = None  # the test over each verdict's candidates; None: saved before, Holm
    starts: int | None = None  # with 'fixed-sequence': the starts of the sequence
    method: str
    statement: str

    @model_serializer(mode="wrap")
    def _as_saved(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_none(handler(self), ("procedure", "starts"))


def _without_none(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Keys a band saved before they existed did not have, left out where unset, so such a
    bundle is rebuilt into the very state it was saved with."""
    return {key: value for key, value in data.items() if key not in keys or value is not None}


class CalibrationRows(BaseModel):
    """The rows the band was chosen on, and what the band does on them."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(
        default=SPLIT_SOURCE,
        description="'split:calibration' (rows held back from fitting and selection) or 'cross-fit' (each row "
        "scored by the judge fitted on the other grouped folds of train + dev).",
    )
    folds: int | None = Field(default=None, description="With 'cross-fit': the number of grouped folds.")
    count: int
    groups: int
    fingerprint: str
    coverage: float | None = None
    precision: dict[str, float | None] = Field(default_factory=dict)
    answered: dict[str, int] = Field(default_factory=dict)
    positive_rate_when_abstaining: float | None = None

    @model_serializer(mode="wrap")
    def _as_saved(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_none(handler(self), ("folds",))  # a split has no folds


class Candidates(BaseModel):
    model_config = ConfigDict(frozen=True)

    thresholds: list[float]
    valid: dict[str, list[float]]


class Shortfall(BaseModel):
    """A verdict no candidate threshold passed the test for: its target, and the candidate
    that came closest (the smallest p-value) with the verdict's precision and rows there."""

    model_config = ConfigDict(frozen=True)

    verdict: str
    target: float
    when: Literal[">=", "<"] = Field(description="The verdict is given where the score compares so to the threshold.")
    of: str = Field(description="The score: 'P(true)', or 'P(A), when the most likely'.")
    closest_threshold: float | None = Field(description="None: the verdict was never given at any candidate.")
    precision: float | None
    rows: int
    p_value: float


class BandChoice(BaseModel):
    """What choosing a band found: the band (or none), the guarantee in words, the
    calibration rows, the candidates and which passed, and which verdicts fell short."""

    model_config = ConfigDict(frozen=True)

    found: bool
    band: Band | None
    guarantee: Guarantee
    calibration_rows: CalibrationRows
    candidates: Candidates
    shortfalls: list[Shortfall] = Field(default_factory=list)


def candidate_thresholds(scores: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """Thresholds to test, fixed before the calibration rows are read: quantiles of the
    scores of other rows, where the scores are whatever their scale (a fixed grid spends
    most of Holm's budget where no rows are); the fixed grid without such rows."""
    if scores is None or len(scores) == 0:
        return np.array(FIXED_GRID)
    return np.unique(np.round(np.quantile(np.asarray(scores, float), QUANTILES), 6))


# --- applying a band (numpy only) ------------------------------------------------------------


def binary_answers(p: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    """1 where ``p >= hi`` ("yes"), 0 where ``p < lo`` ("no"), NaN (abstain) in between; a
    threshold of ``None`` is a verdict never given."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    if lo is not None:
        out[p < lo] = 0.0
    if hi is not None:
        out[p >= hi] = 1.0
    return out


def label_answers(proba: np.ndarray, thresholds: Sequence[float | None]) -> np.ndarray:
    """The most likely label's index where its probability reaches that label's threshold,
    NaN (abstain) elsewhere; a threshold of ``None`` is a label never given."""
    proba = np.asarray(proba, float)
    top = proba.argmax(axis=1)
    cut = np.array([np.inf if t is None else t for t in thresholds])[top]
    return np.where(proba[np.arange(len(proba)), top] >= cut, top.astype(float), np.nan)


def _precision_of(answers: np.ndarray, y: np.ndarray, verdict: int) -> tuple[float | None, int]:
    said = answers == verdict
    return (float(np.mean(y[said] == verdict)), int(said.sum())) if said.any() else (None, 0)


def _shortfall(
    answer: Answer,
    target: float,
    candidates: np.ndarray,
    p_values: Sequence[float],
    answers_at: Callable[[float], np.ndarray],
    y: np.ndarray,
    code: int,
) -> Shortfall:
    """The candidate with the smallest p-value, and the verdict's precision and rows there;
    ``answers_at(t)``: the band's answers with the verdict given at threshold ``t`` alone."""
    shown = {"verdict": answer.verdict, "target": target, "when": answer.when, "of": answer.of}
    if not len(candidates) or min(p_values) >= 1:
        return Shortfall(**shown, closest_threshold=None, precision=None, rows=0, p_value=1.0)
    closest = int(np.argmin(p_values))
    threshold = float(candidates[closest])
    precision, rows = _precision_of(answers_at(threshold), y, code)
    return Shortfall(
        **shown,
        closest_threshold=threshold,
        precision=precision,
        rows=rows,
        p_value=float(p_values[closest]),
    )


def _codes(groups: Sequence[str]) -> np.ndarray:
    lookup: dict[str, int] = {}
    return np.array([lookup.setdefault(str(g), len(lookup)) for g in groups], dtype=np.int64)


def _cut(threshold: float) -> str:
    """A threshold in words: two decimals, more where two would read as 0 or 1."""
    text = f"{threshold:.2f}"
    return f"{threshold:.3g}" if text in ("0.00", "1.00") else text


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _rows_noun(rows: CalibrationRows) -> str:
    return "out-of-fold rows" if rows.source == CROSS_FIT_SOURCE else "calibration rows"


def _rows_phrase(rows: CalibrationRows) -> str:
    return f"{rows.count} {_rows_noun(rows)} ({rows.groups} {'group' if rows.groups == 1 else 'groups'})"


def _cross_fit_words(rows: CalibrationRows) -> str:
    """Why a band chosen on out-of-fold scores is approximate whatever the groups."""
    if rows.source != CROSS_FIT_SOURCE:
        return ""
    folds = rows.folds or 0
    return (
        f" Cross-fitted: each row was scored by the judge fitted on the other {folds - 1} of {folds} grouped folds, "
        "and the band is applied to the judge fitted on all of them, so the statement is approximate whatever the "
        "groups."
    )


def _targets_phrase(targets: dict[str, float], given: Sequence[str]) -> str:
    parts = [f"at least {_percent(targets[key])} of its '{key}' verdicts" for key in given]
    if not parts:
        return ""
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text.replace("of its", "of this judge's", 1)


def guarantee_statement(
    targets: dict[str, float], given: Sequence[str], delta: float, groups_mode: GroupsMode, rows: CalibrationRows
) -> str:
    """The guarantee in words, as the bundle, the run description and the card state it."""
    return (
        f"With probability at least {_percent(1 - delta)} over the draw of the "
        f"{_rows_phrase(rows)}, {_targets_phrase(targets, given)} agree with people, "
        f"{GROUPS_WORDS[groups_mode].format(rows=_rows_noun(rows))}.{_cross_fit_words(rows)}"
    )


def choose_binary_band(
    p: Sequence[float] | np.ndarray,
    positive: Sequence[bool] | np.ndarray,
    groups: Sequence[str],
    *,
    keys: tuple[str, str],
    targets: dict[str, float],
    delta: float,
    groups_mode: GroupsMode = "design_effect",
    allow_never: bool = False,
    candidates: np.ndarray,
    fingerprint: str = "",
    folds: int | None = None,
    procedure: Procedure = "holm",
    starts: int = 1,
) -> BandChoice:
    """The band ``lo <= hi`` on P(yes) (``keys``: how "yes" and "no" are spelled) with the
    widest coverage on these calibration rows among those whose precision of "yes" and of
    "no" reach ``targets`` with probability >= 1 - ``delta`` (each verdict a family at
    delta / 2). ``allow_never``: a verdict no threshold passes for may be never given
    (its target then holds vacuously) instead of leaving no band. ``procedure`` and
    ``starts``: the test within each family (:func:`judgecal.stats.ltt.family_test`)."""
    yes, no = keys
    p, y = np.asarray(p, float), np.asarray(positive, bool).astype(int)
    codes = _codes(groups) if groups_mode == "design_effect" else None
    candidates = np.asarray(candidates, float)
    test = {"procedure": procedure, "starts": starts}
    tested = {
        yes: valid_binary_thresholds(p, y, codes, candidates, 1, targets[yes], delta / 2, **test),
        no: valid_binary_thresholds(p, y, codes, candidates, 0, targets[no], delta / 2, **test),
    }
    valid = {key: found.valid for key, found in tested.items()}
    his: list[float | None] = [*valid[yes], *([None] if allow_never else [])]
    los: list[float | None] = [*([None] if allow_never else []), *valid[no]]
    pairs = [(lo, hi) for lo in los for hi in his if not (lo is None and hi is None) and _ordered(lo, hi)]
    chosen = max(pairs, key=lambda pair: _widest(p, pair), default=None)
    rows = _binary_rows(p, y, _origin(groups, fingerprint, folds), chosen, keys)
    guarantee = Guarantee(
        precision=dict(targets),
        delta=delta,
        groups=groups_mode,
        allow_never=allow_never,
        **recorded_test(procedure, starts),
        method=f"{method_words(procedure, starts)}, delta / 2 for each verdict",
        statement="",
    )
    of = f"P({yes})"
    shortfalls = _binary_shortfalls(p, y, candidates, keys, targets, tested)
    found = {"calibration_rows": rows, "candidates": Candidates(thresholds=candidates.tolist(), valid=valid)}
    if chosen is None:
        statement = _no_band_statement(rows, shortfalls, _never_alternative(p, valid, keys) if not allow_never else "")
        guarantee = guarantee.model_copy(update={"statement": statement})
        return BandChoice(found=False, band=None, guarantee=guarantee, shortfalls=shortfalls, **found)
    lo, hi = chosen
    given = [key for key, cut in ((yes, hi), (no, lo)) if cut is not None]
    statement = (
        guarantee_statement(targets, given, delta, groups_mode, rows) + " " + _binary_band_words(lo, hi, keys, rows)
    )
    band = Band(
        answers=[Answer(verdict=yes, when=">=", threshold=hi, of=of), Answer(verdict=no, when="<", threshold=lo, of=of)]
    )
    guarantee = guarantee.model_copy(update={"statement": statement})
    return BandChoice(found=True, band=band, guarantee=guarantee, shortfalls=shortfalls, **found)


def _binary_shortfalls(
    p: np.ndarray,
    y: np.ndarray,
    candidates: np.ndarray,
    keys: tuple[str, str],
    targets: dict[str, float],
    tested: dict[str, Tested],
) -> list[Shortfall]:
    """Each verdict no candidate passed for, with the candidate closest to passing."""
    yes, no = keys
    sides = (
        (yes, ">=", 1, lambda t: binary_answers(p, None, t)),
        (no, "<", 0, lambda t: binary_answers(p, t, None)),
    )
    return [
        _shortfall(
            Answer(verdict=key, when=when, threshold=None, of=f"P({yes})"),
            targets[key],
            candidates,
            tested[key].p_values,
            answers_at,
            y,
            code,
        )
        for key, when, code, answers_at in sides
        if not tested[key].valid
    ]


def _ordered(lo: float | None, hi: float | None) -> bool:
    return lo is None or hi is None or lo <= hi


def _widest(p: np.ndarray, pair: tuple[float | None, float | None]) -> tuple[float, float]:
    """Coverage of the band on these rows; among equal coverage, the narrower band."""
    lo, hi = pair
    answers = binary_answers(p, lo, hi)
    gap = (np.inf if hi is None else hi) - (-np.inf if lo is None else lo)
    return float(np.mean(~np.isnan(answers))), -gap


def _origin(groups: Sequence[str], fingerprint: str, folds: int | None) -> CalibrationRows:
    """The rows a band is chosen on, before any band: how many, in how many groups, and
    where from (``folds``: the out-of-fold scores of that many grouped folds; None: a split)."""
    return CalibrationRows(
        source=SPLIT_SOURCE if folds is None else CROSS_FIT_SOURCE,
        folds=folds,
        count=len(groups),
        groups=len(set(map(str, groups))),
        fingerprint=fingerprint,
    )


def _binary_rows(
    p: np.ndarray,
    y: np.ndarray,
    base: CalibrationRows,
    chosen: tuple[float | None, float | None] | None,
    keys: tuple[str, str],
) -> CalibrationRows:
    """The calibration rows, and what the chosen band does on them."""
    if chosen is None:
        return base
    answers = binary_answers(p, *chosen)
    precision, answered = {}, {}
    for key, code in zip(keys, (1, 0), strict=True):
        value, rows = _precision_of(answers, y, code)
        precision[key], answered[key] = value, rows
    abstained = np.isnan(answers)
    return base.model_copy(
        update={
            "coverage": float(np.mean(~abstained)),
            "precision": precision,
            "answered": answered,
            "positive_rate_when_abstaining": float(np.mean(y[abstained])) if abstained.any() else None,
        }
    )


def _never_alternative(p: np.ndarray, valid: dict[str, list[float]], keys: tuple[str, str]) -> str:
    """What ``allow_never`` would give when one verdict has valid thresholds and the other none."""
    yes, no = keys
    if valid[yes] and not valid[no]:
        never, answers = no, binary_answers(p, None, valid[yes][0])
    elif valid[no] and not valid[yes]:
        never, answers = yes, binary_answers(p, valid[no][-1], None)
    else:
        return ""
    coverage = float(np.mean(~np.isnan(answers)))
    return f"With allow_never = true it would never say '{never}' and answer {_percent(coverage)} of them."


def _binary_band_words(lo: float | None, hi: float | None, keys: tuple[str, str], rows: CalibrationRows) -> str:
    yes, no = keys
    rest = f"abstains elsewhere: {_percent(1 - (rows.coverage or 0.0))} of {_rows_noun(rows)}"
    if hi is None:
        return f"It never says '{yes}'; it says '{no}' where P({yes}) < {_cut(lo)} and {rest}."
    if lo is None:
        return f"It never says '{no}'; it says '{yes}' where P({yes}) ≥ {_cut(hi)} and {rest}."
    if lo == hi:
        return f"It answers every row: '{yes}' where P({yes}) ≥ {_cut(hi)}, else '{no}'."
    share = _percent(1 - (rows.coverage or 0.0))
    return f"It abstains when {_cut(lo)} ≤ P({yes}) < {_cut(hi)}: {share} of {_rows_noun(rows)}."


def _no_band_statement(rows: CalibrationRows, shortfalls: list[Shortfall], alternative: str) -> str:
    parts = []
    for short in shortfalls:
        if short.closest_threshold is None or short.precision is None:
            parts.append(f"'{short.verdict}' was never given at any candidate threshold")
        else:
            parts.append(
                f"no threshold passed the test of precision ≥ {short.target:.2f} for '{short.verdict}' (closest: "
                f"precision {short.precision:.3f} on {short.rows} rows where {short.of} "
                f"{'≥' if short.when == '>=' else '<'} {_cut(short.closest_threshold)}, p-value {short.p_value:.2g})"
            )
    why = "; ".join(parts) or "no pair of valid thresholds leaves a band"
    text = f"No band met the targets on the {_rows_phrase(rows)}: {why}."
    return " ".join(part for part in (text, alternative, "The judge answers every row, without a guarantee.") if part)


def choose_label_band(
    proba: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str],
    *,
    keys: Sequence[str],
    targets: dict[str, float],
    delta: float,
    families: Sequence[Sequence[int]],
    groups_mode: GroupsMode = "design_effect",
    allow_never: bool = False,
    candidates: np.ndarray,
    fingerprint: str = "",
    folds: int | None = None,
    procedure: Procedure = "holm",
    starts: int = 1,
) -> BandChoice:
    """One threshold per family of labels (pairwise: A and B share one, tie its own), on
    the probability of the most likely label, each family tested at delta / (number of
    families); the lowest valid threshold of each (the widest coverage: a label's coverage
    depends on its own threshold only). ``labels``: the human label's column in ``proba``."""
    proba, y = np.asarray(proba, float), np.asarray(labels, int)
    codes = _codes(groups) if groups_mode == "design_effect" else None
    candidates = np.asarray(candidates, float)
    tested = partial(valid_label_thresholds, proba, y, codes, candidates, procedure=procedure, starts=starts)
    thresholds: list[float | None] = [None] * len(keys)
    valid: dict[str, list[float]] = {}
    p_values: dict[str, list[float]] = {}
    for family in families:
        found = tested(family, [targets[keys[k]] for k in family], delta / len(families))
        for k in family:
            valid[keys[k]], p_values[keys[k]] = found.valid, found.p_values
            thresholds[k] = found.valid[0] if found.valid else None
    guarantee = Guarantee(
        precision=dict(targets),
        delta=delta,
        groups=groups_mode,
        allow_never=allow_never,
        **recorded_test(procedure, starts),
        method=f"{method_words(procedure, starts)}, delta / {len(families)} for each of "
        + ", ".join(" and ".join(keys[k] for k in family) for family in families),
        statement="",
    )
    missing = [keys[k] for k, t in enumerate(thresholds) if t is None]
    found_band = any(t is not None for t in thresholds) and (allow_never or not missing)
    rows = _label_rows(proba, y, _origin(groups, fingerprint, folds), thresholds if found_band else None, keys)
    shortfalls = [
        _shortfall(
            Answer(verdict=key, when=">=", threshold=None, of=f"P({key}), when the most likely"),
            targets[key],
            candidates,
            p_values[key],
            _only(proba, k),
            y,
            k,
        )
        for k, key in enumerate(keys)
        if key in missing
    ]
    if not found_band:
        statement = _no_band_statement(rows, shortfalls, "")
        band = None
    else:
        given = [keys[k] for k, t in enumerate(thresholds) if t is not None]
        words = _label_band_words(thresholds, keys, families, rows)
        statement = f"{guarantee_statement(targets, given, delta, groups_mode, rows)} {words}"
        band = Band(
            answers=[
                Answer(verdict=key, when=">=", threshold=t, of=f"P({key}), when the most likely")
                for key, t in zip(keys, thresholds, strict=True)
            ]
        )
    return BandChoice(
        found=found_band,
        band=band,
        guarantee=guarantee.model_copy(update={"statement": statement}),
        calibration_rows=rows,
        candidates=Candidates(thresholds=candidates.tolist(), valid=valid),
        shortfalls=shortfalls,
    )


def _label_rows(
    proba: np.ndarray,
    y: np.ndarray,
    base: CalibrationRows,
    thresholds: Sequence[float | None] | None,
    keys: Sequence[str],
) -> CalibrationRows:
    if thresholds is None:
        return base
    answers = label_answers(proba, thresholds)
    precision, answered = {}, {}
    for k, key in enumerate(keys):
        precision[key], answered[key] = _precision_of(answers, y, k)
    return base.model_copy(
        update={"coverage": float(np.mean(~np.isnan(answers))), "precision": precision, "answered": answered}
    )


def _only(proba: np.ndarray, k: int) -> Callable[[float], np.ndarray]:
    """The answers with label ``k`` alone given, at a threshold (the others never)."""

    def answers_at(threshold: float) -> np.ndarray:
        thresholds: list[float | None] = [None] * proba.shape[1]
        thresholds[k] = threshold
        return label_answers(proba, thresholds)

    return answers_at


def _label_band_words(
    thresholds: Sequence[float | None], keys: Sequence[str], families: Sequence[Sequence[int]], rows: CalibrationRows
) -> str:
    cuts = []
    for family in families:
        t = thresholds[family[0]]
        names = " or ".join(keys[k] for k in family)
        cuts.append(f"{names}: never" if t is None else f"{names}: {_cut(t)}")
    abstains = 1 - (rows.coverage or 0.0)
    return (
        f"It abstains unless the most likely verdict's probability reaches its threshold ({'; '.join(cuts)}): "
        f"{_percent(abstains)} of {_rows_noun(rows)}."
    )
