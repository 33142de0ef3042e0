"""Configuration (sessionrec/config.py): defaults, SESSIONREC_* environment,
overrides, validation naming the setting."""

from __future__ import annotations

import dataclasses

import pytest

from sessionrec.config import DEFAULT_DB_URL, Config
from sessionrec.errors import ConfigError


def test_defaults() -> None:
    config = Config.load(env={})
    assert config == Config()
    assert config.db_url == DEFAULT_DB_URL
    assert (config.host, config.port) == ("127.0.0.1", 50051)
    assert config.session_timeout_s == 1800.0
    assert config.max_clock_skew_s == 600.0
    assert config.max_events_per_call == 500
    assert config.sqlite_synchronous == "FULL"
    assert config.log_level == "INFO"


def test_environment_overrides_defaults_with_the_right_types() -> None:
    config = Config.load(
        env={
            "SESSIONREC_PORT": "6000",
            "SESSIONREC_SESSION_TIMEOUT_S": "60.5",
            "SESSIONREC_DB_URL": "sqlite:////var/lib/sessionrec.db",
            "SESSIONREC_WORKERS": "4",
            "SESSIONREC_LOG_LEVEL": "DEBUG",
            "SESSIONREC_NOT_A_SETTING": "ignored",
            "PORT": "1",
        }
    )
    assert config.port == 6000 and isinstance(config.port, int)
    assert config.session_timeout_s == 60.5 and isinstance(config.session_timeout_s, float)
    assert config.db_url == "sqlite:////var/lib/sessionrec.db"
    assert config.workers == 4
    assert config.log_level == "DEBUG"
    assert config.grace_s == Config().grace_s


def test_overrides_beat_the_environment_and_none_means_not_given() -> None:
    env = {"SESSIONREC_PORT": "6000", "SESSIONREC_HOST": "0.0.0.0"}
    config = Config.load(overrides={"port": 7000, "host": None}, env=env)
    assert config.port == 7000
    assert config.host == "0.0.0.0"
    assert Config.load(overrides={"models_dir": "/srv/models"}, env={}).models_dir == "/srv/models"


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^colour: unknown setting"):
        Config.load(overrides={"colour": "blue"}, env={})


@pytest.mark.parametrize(
    ("name", "raw"),
    [("port", "fifty"), ("session_timeout_s", "30m"), ("workers", "2.5"), ("port", "")],
)
def test_an_unparsable_environment_value_names_the_setting(name: str, raw: str) -> None:
    key = "SESSIONREC_" + name.upper()
    with pytest.raises(ConfigError, match=rf"^{name}: cannot parse {key}="):
        Config.load(env={key: raw})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("db_url", "mysql://localhost/db"),
        ("port", 70000),
        ("port", -1),
        ("session_timeout_s", 0),
        ("reaper_interval_s", -1.0),
        ("max_clock_skew_s", 0),
        ("grace_s", 0),
        ("model_poll_interval_s", -0.5),
        ("max_events_per_call", 0),
        ("workers", 0),
        ("history_limit", 0),
        ("max_items_per_call", 0),
        ("cold_item_share", -0.1),
        ("cold_item_share", 1.5),
        ("catalog_refresh_interval_s", -1.0),
        ("analytics_refresh_interval_s", -1.0),
        ("sqlite_synchronous", "SOMETIMES"),
        ("log_level", "LOUD"),
    ],
)
def test_validation_errors_name_the_setting(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        Config.load(overrides={name: value}, env={})
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        Config().replace(**{name: value})


def test_validation_applies_to_environment_values() -> None:
    with pytest.raises(ConfigError, match=r"^port: must be 0\.\.65535"):
        Config.load(env={"SESSIONREC_PORT": "99999"})


def test_lower_case_choices_are_accepted() -> None:
    config = Config.load(overrides={"sqlite_synchronous": "normal", "log_level": "debug"}, env={})
    assert config.sqlite_synchronous == "normal"


def test_model_polling_may_be_off() -> None:
    assert Config.load(overrides={"model_poll_interval_s": 0}, env={}).model_poll_interval_s == 0


def test_replace_returns_a_new_validated_config() -> None:
    base = Config()
    changed = base.replace(port=0)
    assert changed.port == 0 and base.port == 50051
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "name",
    [
        "session_timeout_s",
        "reaper_interval_s",
        "max_clock_skew_s",
        "grace_s",
        "model_poll_interval_s",
        "catalog_refresh_interval_s",
        "analytics_refresh_interval_s",
        "cold_item_share",
    ],
)
def test_nan_durations_are_refused(name: str) -> None:
    """NaN compares false with everything, so "must be > 0" has to reject it explicitly."""
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        Config.load(env={"SESSIONREC_" + name.upper(): "nan"})


def test_catalog_settings_from_the_environment() -> None:
    defaults = Config()
    assert (defaults.cold_item_share, defaults.catalog_refresh_interval_s) == (0.1, 5.0)
    assert defaults.max_items_per_call == 1000
    config = Config.load(
        env={
            "SESSIONREC_COLD_ITEM_SHARE": "0",
            "SESSIONREC_CATALOG_REFRESH_INTERVAL_S": "0",
            "SESSIONREC_MAX_ITEMS_PER_CALL": "50",
        }
    )
    assert config.cold_item_share == 0.0 and config.catalog_refresh_interval_s == 0.0
    assert config.max_items_per_call == 50
