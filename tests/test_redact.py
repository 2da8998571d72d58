"""One rule for credentials in URLs: passwords and key-like query values never shown."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from judgecal.redact import has_credentials, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # A password holding "@" is cut where a server cuts it: at the last "@".
        ("postgresql://judgecal:se@cret@db-host/optuna", "postgresql://judgecal:***@db-host/optuna"),
        (
            "postgresql+psycopg2://u:p%40w@h:5432/db?sslmode=require",
            "postgresql+psycopg2://u:***@h:5432/db?sslmode=require",
        ),
        ("mysql://u:pw@h/db?password=x&charset=utf8", "mysql://u:***@h/db?password=***&charset=utf8"),
        ("https://user:pw@gpu-box:8000/v1?api-key=abc&x=1", "https://user:***@gpu-box:8000/v1?api-key=***&x=1"),
        ("http://u:p/w@host/x", "http://u:***@host/x"),
        ("https://h/v1?access_token=abc#part", "https://h/v1?access_token=***#part"),
        ("https://h/v1?apikey=abc&Signature=s", "https://h/v1?apikey=***&Signature=***"),
        # SQLAlchemy reads a database password up to its "@", "?" and "#" included.
        ("postgresql://u:pa?ss@db-host/optuna", "postgresql://u:***@db-host/optuna"),
        ("postgresql://u:p#1@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
        ("mysql://u:a/b?c@h/db", "mysql://u:***@h/db"),
        # Not a valid web URL, but the text after the colon is no port: hidden all the same.
        ("https://u:pa?ss#1@gpu-box/v1", "https://u:***@gpu-box/v1"),
        ("https://u:p@ss/w@gpu-box/v1?token=t", "https://u:***@gpu-box/v1?token=***"),
    ],
)
def test_passwords_and_key_like_query_values_are_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert has_credentials(url)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////home/me/mlruns/optuna.db",
        "http://127.0.0.1:8000/v1",
        "mysql://reader@h/db",
        "http://host/users/@me",
        "https://gpu-box:8000/v1?contact=ops@example.com",
        "http://host:8080#top@x",
        "https://h/v1?model=x&key=",
        "file:///tmp/judge.json",
        "not a url",
    ],
)
def test_urls_without_credentials_are_left_as_they_are(url: str) -> None:
    assert redact_url(url) == url
    assert not has_credentials(url)


def test_urls_inside_an_error_message_are_redacted() -> None:
    message = "could not reach postgresql://u:s3cr3t@db/x after 3 tries (https://a:b@c/d?token=t1); giving up"
    shown = redact_text(message)
    assert "s3cr3t" not in shown and ":b@" not in shown and "t1" not in shown
    assert shown == "could not reach postgresql://u:***@db/x after 3 tries (https://a:***@c/d?token=***); giving up"


def test_lm_settings_never_serialise_credentials_but_still_use_them() -> None:
    """Runs record the LM settings as dumped (MLflow params) and bundles save them as JSON:
    neither may carry the password; the LM built from the settings still needs it."""
    from judgecal.backends.models import build_lm
    from judgecal.backends.settings import LMConfig

    config = LMConfig(model="hosted_vllm/judge", api_base="https://alice:s3cr3t@gpu-box:8000/v1?api-key=k3y")
    for dumped in (json.dumps(config.model_dump()), config.model_dump_json()):
        assert "s3cr3t" not in dumped and "k3y" not in dumped
        assert "https://alice:***@gpu-box:8000/v1?api-key=***" in dumped
    assert config.api_base == "https://alice:s3cr3t@gpu-box:8000/v1?api-key=k3y"
    assert build_lm(config).kwargs["api_base"] == config.api_base


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p(a)ss@db/x", "postgresql://u:***@db/x"),
        ("postgresql://u:pa,ss@db/x", "postgresql://u:***@db/x"),
        ("mysql://u:p[a]{s}s@db:3306/x", "mysql://u:***@db:3306/x"),
        ('https://u:it\'s"q"@gpu-box/v1?token=t1', "https://u:***@gpu-box/v1?token=***"),
        ("https://u:p@ss(1)<2>@gpu-box", "https://u:***@gpu-box"),
        ("postgresql://u:p?a#s(s)@db/x", "postgresql://u:***@db/x"),
    ],
)
def test_a_password_holding_brackets_quotes_or_commas_is_hidden_whole_inside_text(url: str, shown: str) -> None:
    """Inside free text a URL ends at a bracket, quote or comma, but its user info runs to
    the last '@' before the host, as a server reads it: none of the password shows."""
    assert redact_text(f"could not reach ({url}), giving up") == f"could not reach ({shown}), giving up"


def test_the_storage_a_search_records_hides_its_password(tmp_path) -> None:
    from judgecal.pipeline.search import storage_param
    from judgecal.workspace import Workspace

    workspace = Workspace(tmp_path)
    assert storage_param("postgresql://u:s3cr3t@h/db", workspace) == "postgresql://u:***@h/db"
    assert storage_param("mysql+pymysql://u:s3(cr)3t@h:3306/db", workspace) == "mysql+pymysql://u:***@h:3306/db"
    assert storage_param(f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}", workspace) == "sqlite:///mlruns/optuna.db"


@given(password=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24))
@example(password="pa?ss#1")
@example(password="se@cr/et")
def test_a_database_password_is_hidden_whole_whatever_it_holds(password: str) -> None:
    """SQLAlchemy reads everything between the first colon and the "@" before the host as
    the password: whatever characters it holds, none of them is shown."""
    assert redact_url(f"postgresql://judgecal:{password}@db-host:5432/optuna") == (
        "postgresql://judgecal:***@db-host:5432/optuna"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "[openai/judge] failed to connect to alice:s3cr3t@127.0.0.1:8000: [Errno 111]",
            "[openai/judge] failed to connect to alice:***@127.0.0.1:8000: [Errno 111]",
        ),
        ("proxy (bob:p@ss/w0rd@gpu-box) refused", "proxy (bob:***@gpu-box) refused"),
        ("at 12:30 the run ended; mail ops@example.com", "at 12:30 the run ended; mail ops@example.com"),
        ("see postgresql://u:***@db/x", "see postgresql://u:***@db/x"),
    ],
)
def test_a_password_quoted_without_a_scheme_is_hidden(text: str, shown: str) -> None:
    """HTTP clients name the server they failed to reach as ``user:password@host``."""
    assert redact_text(text) == shown


def test_an_error_line_is_its_first_line_with_credentials_hidden() -> None:
    from judgecal.redact import error_line

    error = ConnectionError("cannot reach https://u:s3cr3t@h/v1\nTry checking your settings.\nMore advice.")
    assert error_line(error) == "cannot reach https://u:***@h/v1"
    assert error_line(error, with_type=True) == "ConnectionError: cannot reach https://u:***@h/v1"
    assert error_line(ValueError()) == "ValueError" and error_line(ValueError(), with_type=True) == "ValueError"
