"""The production settings refuse placeholder secrets; development accepts anything."""

from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError

from app.config import Settings

GOOD_KEY = secrets.token_urlsafe(32)
GOOD_URL = "postgresql+psycopg://vigil:" + secrets.token_urlsafe(16) + "@db:5432/vigil"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "changeme",
        "change-me",
        "CHANGEME",
        "secret",
        "admin",
        "short-but-random-1234",  # fewer than 24 characters
        "changeme-changeme-changeme-1234",
        "please-Change-Me-before-going-live",
    ],
)
def test_production_refuses_a_placeholder_bootstrap_key(key: str) -> None:
    with pytest.raises(ValidationError, match="VIGIL_BOOTSTRAP_ADMIN_KEY"):
        Settings(environment="production", bootstrap_admin_key=key, database_url=GOOD_URL)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://vigil:changeme@db:5432/vigil",
        "postgresql+psycopg://vigil:change-me@db:5432/vigil",
    ],
)
def test_production_refuses_a_placeholder_database_password(url: str) -> None:
    with pytest.raises(ValidationError, match="VIGIL_DATABASE_URL"):
        Settings(environment="production", bootstrap_admin_key=GOOD_KEY, database_url=url)


def test_production_refuses_placeholders_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIGIL_ENVIRONMENT", "production")
    monkeypatch.setenv("VIGIL_DATABASE_URL", GOOD_URL)
    monkeypatch.setenv("VIGIL_BOOTSTRAP_ADMIN_KEY", "change-me")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("VIGIL_BOOTSTRAP_ADMIN_KEY", GOOD_KEY)
    assert Settings().bootstrap_admin_key == GOOD_KEY


def test_production_accepts_real_secrets_and_no_bootstrap_key() -> None:
    assert Settings(environment="production", bootstrap_admin_key=GOOD_KEY, database_url=GOOD_URL)
    assert Settings(environment="production", bootstrap_admin_key=None, database_url=GOOD_URL)


def test_development_accepts_placeholders() -> None:
    settings = Settings(environment="development", bootstrap_admin_key="changeme")
    assert settings.bootstrap_admin_key == "changeme"
