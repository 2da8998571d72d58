"""The search's settings (the ``[search]`` section): which strategies, how many trials,
how trials are scored and pruned, and where the study lives. Apart from the search, so
that where a study is stored (``calibrate/storage.py``) can read them too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SearchConfig(BaseModel):
    """Which strategies to search, for how many trials, and where the study lives."""

    model_config = ConfigDict(extra="forbid")

    strategies: list[str] = Field(
        default_factory=lambda: ["all"], description='Strategies to search, or ["all"]: every one that applies.'
    )
    trials: int = Field(
        default=12, ge=1, description="Distinct finished trials the study should reach (repeats do not count)."
    )
    storage: str | None = Field(default=None, description="Optuna storage URL (default: sqlite in mlruns/).")
    study_name: str | None = Field(default=None, description="Default: <judge name>-<split fingerprint>.")
    seed: int = Field(default=0, description="Sampler seed; the same seed gives the same sequence of trials.")
    worker: int = Field(
        default=0, ge=0, description="This worker's number in a shared study: its sampler seed is seed + worker."
    )
    folds: int = Field(default=5, ge=2, description="Grouped folds of train + dev for cross-validated selection.")
    dev_chunk: int = Field(default=16, ge=1, description="Dev rows judged between pruning checks (LM strategies).")
    prune_p: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="p-value of the paired one-sided test below which an LM trial worse than the best is pruned.",
    )
    max_repeats: int = Field(
        default=25, ge=1, description="Stop after this many proposals in a row repeat settings already tried."
    )
    max_lm_calls: int | None = Field(
        default=None,
        ge=1,
        description="LM calls the search may make (cached answers included), the winner's test and gate calls "
        "reserved up front; a trial whose bound exceeds what is left is skipped and says why.",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="US dollars the search may spend on LM calls, at the model's price; kept like max_lm_calls.",
    )
    heartbeat_interval: int = Field(default=30, ge=1, description="Seconds between a worker's heartbeats.")
    grace_period: int = Field(default=90, ge=2, description="Seconds without heartbeat before a trial is failed.")
