"""The shared settings refuse unsafe production values: here the key that seals dead letters."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from chassis import deadletters
from chassis.settings import DEV_DEAD_LETTER_KEY, ServiceSettings

PRODUCTION = {
    "environment": "production",
    "api_keys": "ops-team:admin:" + "ab" * 32,
    "amqp_url": "amqps://oms:s@broker/oms",
}


def test_production_needs_a_dead_letter_key_of_its_own_where_dead_letters_are_parked(monkeypatch):
    monkeypatch.delenv("DEAD_LETTER_KEY", raising=False)
    production = ServiceSettings(**PRODUCTION)  # a service that parks none needs none
    assert production.dead_letter_keys() == []
    with pytest.raises(ValueError, match="DEAD_LETTER_KEY must be set"):
        deadletters.housekeeping(None, production)  # the one that parks refuses to start
    with pytest.raises(ValidationError, match="dev dead-letter key"):
        ServiceSettings(**PRODUCTION, dead_letter_key=DEV_DEAD_LETTER_KEY)
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    assert ServiceSettings(**PRODUCTION, dead_letter_key=f"{new}, {old}").dead_letter_keys() == [new, old]
    assert ServiceSettings().dead_letter_keys() == [DEV_DEAD_LETTER_KEY]  # local runs need nothing set


def test_a_dead_letter_key_that_is_not_a_fernet_key_is_refused():
    with pytest.raises(ValidationError, match="Fernet key"):
        ServiceSettings(dead_letter_key="CHANGE-ME")
