"""API keys (CONTRACT §3): configured as name:role:sha256, checked against every entry, named in
what they do; the dev keys are refused in production."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from chassis import keys
from chassis.keys import ApiKey, Role
from chassis.settings import ServiceSettings
from chassis.web import Caller, authenticate


def test_a_configured_key_is_found_by_its_hash_and_named():
    shop = f"shop-web:gateway:{keys.digest('s3cret-shop')}"
    ops = f"night-ops:ops:{keys.digest('s3cret-ops')}"
    settings = ServiceSettings(api_keys=f"{shop}, {ops}")
    assert authenticate(settings, "s3cret-shop") == Caller("shop-web", Role.GATEWAY)
    assert authenticate(settings, " s3cret-ops ") == Caller("night-ops", Role.OPS)
    assert authenticate(settings, "s3cret") is None
    assert authenticate(settings, "dev-gateway-key") is None, "configured keys replace the dev keys"
    assert "s3cret" not in repr(settings), "only hashes are held"


def test_a_json_list_is_read_too_and_names_are_unique():
    entry = f"shop:gateway:{keys.digest('k')}"
    assert ServiceSettings(api_keys=f'["{entry}"]').api_keys == (
        ApiKey("shop", Role.GATEWAY, keys.digest("k")),
    )
    with pytest.raises(ValidationError, match="unique"):
        ServiceSettings(api_keys=f"{entry},{entry}")


@pytest.mark.parametrize(
    "entry",
    ["shop:gateway", "shop:root:" + "a" * 64, "Shop Web:gateway:" + "a" * 64, "shop:gateway:dev-gateway-key"],
)
def test_a_malformed_entry_is_refused(entry):
    with pytest.raises(ValidationError):
        ServiceSettings(api_keys=entry)


def test_local_runs_have_the_dev_keys_with_two_gateways():
    settings = ServiceSettings()
    assert authenticate(settings, "dev-gateway-key") == Caller("dev-gateway", Role.GATEWAY)
    assert authenticate(settings, "dev-marketplace-key") == Caller("dev-marketplace", Role.GATEWAY)
    assert authenticate(settings, "dev-ops-key") == Caller("dev-ops", Role.OPS)
    assert authenticate(settings, "dev-admin-key") == Caller("dev-admin", Role.ADMIN)


def test_production_refuses_a_dev_key_even_under_another_name():
    prod = {"environment": "production", "amqp_url": "amqp://oms:pw@mq:5672/"}
    with pytest.raises(ValidationError, match="dev-"):
        ServiceSettings(**prod)
    with pytest.raises(ValidationError, match="dev-"):
        ServiceSettings(**prod, api_keys=f"mine:admin:{keys.digest('dev-admin-key')}")
    assert (
        ServiceSettings(**prod, api_keys=f"mine:admin:{keys.digest('long-random')}").api_keys[0].name
        == "mine"
    )


def test_the_hash_command_prints_what_the_configuration_holds():
    out = subprocess.run(
        [sys.executable, "-m", "chassis.keys", "hash"],
        input="dev-ops-key\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == keys.digest("dev-ops-key") and f"dev-ops:ops:{out}" in [k.entry for k in keys.DEV_KEYS]
    made = subprocess.run(
        [sys.executable, "-m", "chassis.keys", "new", "shop", "gateway"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    key, entry = made[0].rsplit(" ", 1)[1], made[1].rsplit(" ", 1)[1]
    assert ApiKey.parse(entry) == ApiKey("shop", Role.GATEWAY, keys.digest(key))
