"""Where a study lives and who may change it: Optuna storage (SQLite in ``mlruns/`` or
any RDB URL), the lock that lets one worker at a time set a study up, opening a study bound
to one data split, and the trials of a worker that stopped sending heartbeats.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from judgecal.calibrate.search_config import SearchConfig
from judgecal.workspace import check_database, store_dir, store_lock


def default_storage(root: Path) -> str:
    store = store_dir(root)
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'optuna.db'}"


def check_storage(storage_url: str) -> None:
    """A database storage (PostgreSQL, MySQL) that cannot be reached stops the search now,
    in one line without its password, before any trial; a SQLite file needs no probe."""
    check_database(storage_url, "the Optuna storage", "start the database, or pass another --storage")


@contextmanager
def study_lock(storage_url: str, study_name: str, root: Path) -> Iterator[None]:
    """One worker at a time, on every machine that shares the study: creating the study's
    tables, enqueueing its first trials and its MLflow parent run happen once. In PostgreSQL
    an advisory lock, in MySQL a named lock; a SQLite study lives on one machine, where a
    lock file in ``mlruns/`` serves."""
    import hashlib

    if not storage_url.startswith(("postgresql", "mysql")):
        with store_lock(root):
            yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    digest = hashlib.sha256(f"judgecal-study:{study_name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    postgres = storage_url.startswith("postgresql")
    take, release = (
        ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
        if postgres
        else ("SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)")
    )
    engine = sqlalchemy.create_engine(storage_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            bind = {"key": key if postgres else f"judgecal-{key}"}
            connection.execute(sqlalchemy.text(take), bind)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(release), bind)
    finally:
        engine.dispose()


class LostTrialCallback:
    """Run when a worker finds a trial whose worker stopped sending heartbeats (killed, its
    machine gone): the trial is queued again with its settings (Optuna's
    ``RetryHeartbeatStaleTrialCallback``) and ``on_lost(study, trial)`` records it. Optuna
    calls this in the one worker that failed the trial."""

    def __init__(self, max_retry: int = 2, on_lost: Callable[[Any, Any], None] | None = None) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.on_lost = on_lost

    def __call__(self, study: Any, trial: Any) -> None:
        self.retry(study, trial)
        if self.on_lost is not None:
            self.on_lost(study, trial)


LOST_TRIAL = "its worker stopped sending heartbeats (killed, or its machine is gone); its settings were queued again"


def open_study(
    study_name: str,
    storage_url: str,
    search: SearchConfig,
    dev_rows: int,
    root: Path,
    *,
    on_lost: Callable[[Any, Any], None] | None = None,
) -> Any:
    """Create or load the study. ``on_lost(study, trial)`` sees each trial of a lost worker
    that this process fails, once the grace period has passed; the trial is retried."""
    import optuna
    from optuna.storages import RDBStorage

    from judgecal.calibrate.pruning import PairedMeanPruner

    # The search logs each trial's outcome in one line (a failed one with its reason);
    # Optuna's own warning for a failed trial would add the traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with study_lock(storage_url, study_name, root), warnings.catch_warnings():
        # Heartbeats are marked experimental in Optuna; they are what fails a killed worker's trial.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            url=storage_url,
            heartbeat_interval=search.heartbeat_interval,
            grace_period=search.grace_period,
            heartbeat_stale_trial_callback=LostTrialCallback(max_retry=2, on_lost=on_lost),
        )
        return optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            # Workers of one study take seeds seed + worker, so they propose different settings.
            sampler=optuna.samplers.TPESampler(seed=search.seed + search.worker, constant_liar=True),
            pruner=PairedMeanPruner.for_dev(dev_rows, search.dev_chunk, search.prune_p),
        )


def check_study(study: Any, fingerprint: str, strategies: list[str]) -> None:
    """A study is bound to one data split; resuming it on other rows would mix results."""
    attrs = study.user_attrs
    if "split_fingerprint" not in attrs:
        study.set_user_attr("split_fingerprint", fingerprint)
        study.set_user_attr("strategies", strategies)
        return
    if attrs["split_fingerprint"] != fingerprint:
        raise ValueError(
            f"study {study.study_name!r} was run on another data split (fingerprint "
            f"{attrs['split_fingerprint'][:12]} vs {fingerprint[:12]}); use another --study-name"
        )


def taken_for_lost(study: Any, number: int | None, error: Exception) -> int | None:
    """``number`` when ``error`` is Optuna refusing this worker's result because another
    worker finished its trial while it ran: a peer that saw no heartbeat for longer than
    the grace period fails the trial and queues its settings again."""
    import optuna

    refused = isinstance(error, optuna.exceptions.UpdateFinishedTrialError) or str(error).startswith("Cannot tell a ")
    if number is None or not refused:
        return None
    [trial] = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return number if trial.state.is_finished() else None
