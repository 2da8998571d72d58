"""``judgecal plan``: how many labels (rows and groups) a decision needs, from pilot
labels or from expected rates."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.table import Table

from judgecal.cli.output import console

if TYPE_CHECKING:
    from judgecal.pipeline.plan import Pilot, PlanReport, SelectivePilot
    from judgecal.stats.metrics import LabelSpace
    from judgecal.stats.planning import GroupTypes, PilotUncertainty, Quantity, Simulation, SizePlan
    from judgecal.stats.selective_planning import SelectivePlan
    from judgecal.workspace import Workspace

RATES_START = 30
DEFAULT_PILOT_UNCERTAINTY: PilotUncertainty = "ignore"
DEFAULT_PILOT_CONFIDENCE = 0.8
# Flags of the other plans that a band's plan (--coverage) would otherwise ignore without a word.
BAND_IGNORES = (
    "task",
    "verdicts",
    "judge",
    "versus",
    "verdict",
    "above",
    "kappa",
    "prevalence",
    "judge_rate",
    "pilot_uncertainty",
    "pilot_confidence",
)  # groups simulated first when planning from rates: the search widens from there


def plan_command(args: argparse.Namespace) -> int:
    from judgecal.pipeline.plan import PlanReport, read_pilot
    from judgecal.stats.planning import GroupTypes, Simulation
    from judgecal.workspace import Workspace

    settings = Simulation(
        simulations=args.simulations,
        resamples=args.resamples,
        confidence=1 - args.alpha,
        alternative=args.alternative,
        seed=args.seed,
    )
    workspace = Workspace.find(tracking_uri=args.tracking_uri)
    if args.coverage is not None:
        return _band_command(args, workspace)
    pilot: Pilot | None = None
    rates = [flag for flag in ("kappa", "prevalence", "judge_rate") if getattr(args, flag) is not None]
    if args.pilot is not None and rates:
        raise ValueError(f"--{rates[0].replace('_', '-')} describes a judge without a pilot; leave it out with one")
    pilot_flags = [flag for flag in ("pilot_uncertainty", "pilot_confidence") if getattr(args, flag) is not None]
    if args.pilot is None and pilot_flags:
        raise ValueError(f"--{pilot_flags[0].replace('_', '-')} describes a pilot; planning from rates has none")
    if args.pilot is not None:
        pilot = read_pilot(
            args.pilot, [args.judge, args.versus], task=args.task, verdicts=args.verdicts, workspace=workspace
        )
        types, start, space = pilot.types(), pilot.n_groups, pilot.space
    else:
        if args.kappa is None or args.prevalence is None:
            raise ValueError(
                "judgecal plan: give a pilot (labelled rows, evaluation.json or runs:/<id>) or --kappa and --prevalence"
            )
        types = GroupTypes.from_rates(
            kappa=args.kappa,
            prevalence=args.prevalence,
            judge_rate=args.judge_rate,
            rows_per_group=args.rows_per_group,
            icc=args.icc,
        )
        start, space = RATES_START, None
    allowance = _allowance(args, pilot)
    plans = _plans(args, types, settings, start, space, pilot.judges if pilot else ("judge",), allowance)
    report = PlanReport(
        source=args.pilot or "rates",
        judges=list(pilot.judges) if pilot else ["judge"],
        pilot_groups=pilot.n_groups if pilot else None,
        pilot_rows=pilot.n_rows if pilot else None,
        rows_per_group=types.mean_rows,
        left_out=pilot.left_out if pilot else 0,
        plans=plans,
        assumptions=_assumptions(args, pilot, types, settings, allowance) + _marks(plans, args),
    )
    return _finish(args, report, workspace)


def _finish(args: argparse.Namespace, report: PlanReport, workspace: Workspace) -> int:
    """Print the table and its assumptions, write plan.json and the curve, and log both to
    a child of a runs:/ pilot."""
    from judgecal.pipeline.plan import is_run, log_plan, write_plan

    console.print(_table(report))
    console.print(report.assumptions, highlight=False)
    files = write_plan(report, args.out)
    console.print(f"plan: {files[0]}, curve: {files[1]}", highlight=False)
    if args.pilot is not None and is_run(args.pilot) and not args.no_log:
        run_id = log_plan(args.pilot, files, report, workspace)
        console.print(f"logged to MLflow run {run_id}, a child of {args.pilot}", highlight=False)
    return 0


def _band_command(args: argparse.Namespace, workspace: Workspace) -> int:
    """--coverage: the calibration groups a selective judge needs to find a band that meets
    its targets and answers that share of rows, from a selective run's test rows."""
    from judgecal.pipeline.plan import PlanReport, read_selective_pilot
    from judgecal.stats.selective_planning import plan_band

    if args.pilot is None:
        raise ValueError("--coverage plans a selective judge's band: give its run (runs:/<id>) or evaluation.json")
    other = [flag for flag in BAND_IGNORES if getattr(args, flag) is not None]
    if other:
        raise ValueError(f"--{other[0].replace('_', '-')} is not used by a band's plan (--coverage); leave it out")
    pilot = read_selective_pilot(args.pilot, workspace=workspace)
    plan = plan_band(
        pilot.scored,
        pilot.rule,
        args.coverage,
        args.power,
        simulations=args.simulations,
        seed=args.seed,
        least_groups=args.least_groups,
        most_groups=args.most_groups,
    )
    report = PlanReport(
        source=args.pilot,
        judges=["calibrated"],
        pilot_groups=pilot.scored.n_groups,
        pilot_rows=len(pilot.scored.groups),
        rows_per_group=pilot.scored.mean_rows,
        left_out=pilot.left_out,
        plans=[plan],
        assumptions=_band_assumptions(pilot, plan) + _marks([plan], args),
    )
    return _finish(args, report, workspace)


def _band_assumptions(pilot: SelectivePilot, plan: SelectivePlan) -> str:
    """The sentence under a band's plan: what it takes for granted, and why a plan no size
    reaches is not reached."""
    from judgecal.stats.selective import CROSS_FIT_SOURCE

    scored, rule = pilot.scored, pilot.rule
    left = f", {pilot.left_out} rows without a probability left out" if pilot.left_out else ""
    cross_fit = (
        "; the run chose its band on cross-fitted rows, so the groups planned are those of train + dev, whose "
        "out-of-fold scores are taken to be like these"
        if pilot.band_rows == CROSS_FIT_SOURCE
        else ""
    )
    test = "Holm's procedure" if rule.procedure == "holm" else f"a fixed sequence from {rule.starts} starts"
    text = (
        f"Assumes the calibration groups still to label are like the pilot's {scored.n_groups} test groups "
        f"({len(scored.groups):,} rows, {scored.mean_rows:.1f} per group{left}) as the run's calibrated judge scored "
        f"them, the judge not fitted again{cross_fit}; each size is {plan.simulations} calibration sets drawing groups "
        f"with replacement, the band chosen on each as the run chose it (groups counted as {rule.groups}, "
        f"allow_never {str(rule.allow_never).lower()}, the run's {len(rule.candidates)} candidate thresholds "
        f"tested by {test}), "
        f"power: the share of sets whose band answers at least {plan.coverage:.0%} of the pilot's rows "
        f"(seed {plan.seed})."
    )
    if plan.value is None or plan.value < plan.coverage:
        widest = "none" if plan.value is None else f"the widest answers {plan.value:.0%}"
        text += (
            f" No band of the candidate thresholds meets the targets on the pilot's rows as a whole with that "
            f"coverage ({widest}): no number of groups finds one."
        )
    return text


def _allowance(args: argparse.Namespace, pilot: Pilot | None) -> float:
    """How much narrower than asked the width is sized for the pilot's own uncertainty
    (:func:`judgecal.stats.planning.pilot_allowance`); 1 from rates, which have no pilot."""
    from judgecal.stats.planning import pilot_allowance

    if pilot is None:
        return 1.0
    how = args.pilot_uncertainty or DEFAULT_PILOT_UNCERTAINTY
    if args.pilot_confidence is not None and how != "upper":
        raise ValueError(f"--pilot-confidence is the confidence of --pilot-uncertainty upper, not {how}")
    return pilot_allowance(pilot.n_groups, how, args.pilot_confidence or DEFAULT_PILOT_CONFIDENCE)


def _plans(
    args: argparse.Namespace,
    types: GroupTypes,
    settings: Simulation,
    start: int,
    space: LabelSpace | None,
    judges: tuple[str, ...],
    allowance: float = 1.0,
) -> list[SizePlan]:
    """The interval of the judge's metric; with --above, the test that it clears a
    value; with a baseline judge, the test that the judge's kappa is above the baseline's."""
    from judgecal.stats.planning import kappa_gain, plan_power, plan_width

    limits = {"start": start, "least_groups": args.least_groups, "most_groups": args.most_groups}
    quantity = _quantity(args, space)
    plans = [plan_width(types, quantity, args.half_width, settings, **limits, allowance=allowance)]
    if args.above is not None:
        plans.append(plan_power(types, _quantity(args, space, null=args.above), args.power, settings, **limits))
    if len(judges) > 1:
        gain = kappa_gain(baseline=1, candidate=0, name=f"kappa of {judges[0]} minus {judges[1]}")
        plans.append(plan_power(types, gain, args.power, settings, **limits))
    return plans


def _quantity(args: argparse.Namespace, space: LabelSpace | None, null: float = 0.0) -> Quantity:
    from judgecal.stats.planning import agreement_of, kappa_of, precision_of

    if args.metric == "kappa":
        return kappa_of(0, null=null)
    if args.metric == "agreement":
        return agreement_of(0, null=null)
    verdict = _verdict_index(args.verdict, space)
    return precision_of(0, verdict, name=f"precision of {args.verdict or 'the positive verdict'}", null=null)


def _verdict_index(verdict: str | None, space: LabelSpace | None) -> int:
    """Which verdict's precision: ``--verdict`` as the task spells it (any case), else the
    positive label. From rates, the one judge's positive verdict."""
    if space is None:
        if verdict is not None:
            raise ValueError("--verdict: planning from rates has one binary judge; its precision is of 'true'")
        return 0
    if verdict is None:
        if space.positive is None:
            raise ValueError(f"--verdict: the labels are {', '.join(map(str, space.labels))}; name one")
        return space.labels.index(space.positive)
    for index, label in enumerate(space.labels):
        if str(label).lower() == verdict.lower():
            return index
    raise ValueError(f"--verdict: {verdict!r} is not one of the labels {', '.join(map(str, space.labels))}")


def _table(report: PlanReport) -> Table:
    table = Table(title="labels needed", title_justify="left")
    for column in ("decision", "pilot", "groups", "rows", "interval ±", "power"):
        table.add_column(column, justify="left" if column == "decision" else "right")
    for plan in report.plans:
        if plan.goal == "selective":
            pilot = "none" if plan.value is None else f"{plan.value:.0%}"
            groups = f"{plan.groups:,}" + ("" if plan.reached else "+") + ("*" if plan.least else "")
            power = "-" if plan.power is None or not plan.reached else f"{plan.power:.2f}"
            table.add_row(plan.quantity, pilot, groups, f"{plan.rows:,}", "-", power)
            continue
        if plan.goal == "width":
            decision = f"{plan.quantity} within ±{plan.target:g} ({plan.confidence:.0%})"
            power = "-"
        else:
            side = "one-sided" if plan.alternative == "greater" else "two-sided"
            decision = f"{plan.quantity} > {plan.null:g} ({side}, alpha {1 - plan.confidence:g})"
            power = f"{plan.power:.2f}"
        groups = f"{plan.groups:,}" + ("" if plan.reached else "+") + ("*" if plan.least else "")
        width = f"{plan.width / 2:.3f}"
        if not plan.reached:  # the width and power simulated were not at the size shown
            width, power = "-", "-"
        table.add_row(decision, f"{plan.value:.3f}", groups, f"{plan.rows:,}", width, power)
    return table


def _assumptions(
    args: argparse.Namespace, pilot: Pilot | None, types: GroupTypes, settings: Simulation, allowance: float = 1.0
) -> str:
    """The sentence under the table: what the numbers take for granted."""
    if pilot is not None:
        left = f", {pilot.left_out} rows without a verdict left out" if pilot.left_out else ""
        base = (
            f"Assumes the groups still to label are like the pilot's {pilot.n_groups} ({pilot.n_rows:,} rows, "
            f"{types.mean_rows:.1f} per group{left}; judges: {', '.join(pilot.judges)}) and that every row of a "
            "drawn group is labelled"
        )
    else:
        icc = f"intraclass correlation {args.icc:g} of the label within a group" if args.icc else "groups alike"
        rate = args.prevalence if args.judge_rate is None else args.judge_rate
        base = (
            f"Assumes kappa {args.kappa:g}, {args.prevalence:.0%} of rows positive, the judge saying positive on "
            f"{rate:.0%}, {args.rows_per_group} rows per group ({icc})"
        )
    side = "one-sided" if settings.alternative == "greater" else "two-sided"
    spread = _spread(args, pilot, allowance)
    return (
        f"{base}; each size is {settings.simulations} simulated studies drawing groups with replacement, each "
        f"bootstrapped {settings.resamples} times by group (seed {settings.seed}); intervals at "
        f"{settings.confidence:.0%}, tests {side} at alpha {1 - settings.confidence:g}.{spread}"
    )


def _spread(args: argparse.Namespace, pilot: Pilot | None, allowance: float) -> str:
    """What the plan assumed of how much groups differ beyond the pilot's own."""
    if pilot is None:
        return ""
    how = args.pilot_uncertainty or DEFAULT_PILOT_UNCERTAINTY
    if how == "ignore":
        return (
            f" The pilot's {pilot.n_groups} groups are taken to differ as much as the population's "
            "(--pilot-uncertainty ignore): from a few groups, the widths obtained tend to be wider than planned."
        )
    df, n = pilot.n_groups - 1, pilot.n_groups
    if how == "mean":
        reason = (
            f"with the spread between groups estimated on the pilot's {df} degrees of freedom (taken as normal), "
            f"that is the width asked on average over pilots of {n} groups"
        )
    else:
        confidence = args.pilot_confidence or DEFAULT_PILOT_CONFIDENCE
        reason = (
            f"the spread between groups at its upper {confidence:.0%} confidence limit from the pilot's {df} degrees "
            f"of freedom (taken as normal), so the width asked or less from {confidence:.0%} of pilots of {n} groups"
        )
    return (
        f" The widths are sized {allowance:.3f} times narrower than asked (--pilot-uncertainty {how}): {reason}; "
        "tests are planned on the pilot's spread as it is."
    )


def _marks(plans: list[SizePlan] | list[SelectivePlan], args: argparse.Namespace) -> str:
    """What a '+' or '*' beside a number of groups means, when the table shows one."""
    notes = []
    if any(not plan.reached and plan.goal == "selective" for plan in plans):
        notes.append(f" +: no size up to --most-groups {args.most_groups} finds such a band often enough.")
    elif any(not plan.reached for plan in plans):
        notes.append(
            f" +: no size up to --most-groups {args.most_groups} meets the target (for a test: the pilot's value is "
            "not above the value tested, or not by enough)."
        )
    if any(plan.least for plan in plans):
        notes.append(
            f" *: the least size planned (--least-groups {args.least_groups}); fewer groups may meet the target on "
            "this pilot, but a group bootstrap over fewer is not to be trusted."
        )
    return "".join(notes)
