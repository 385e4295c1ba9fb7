"""API keys: each has a name (recorded as the actor of what it does), a role, and is stored only as
a hash. Configuration (``API_KEYS``) holds ``name:role:sha256`` entries, comma-separated or as a
JSON list of such strings; ``python -m chassis.keys hash`` prints the entry part for a key.

SHA-256 without salt or stretching is enough here: keys are random 256-bit strings made by
``python -m chassis.keys new``, not passwords, so a leaked hash cannot be brute-forced back to
its key, and the check stays cheap on every request. A key is compared against every entry with
``hmac.compare_digest``, so the time taken says nothing about which entry (or how much of one)
matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    GATEWAY = "gateway"
    OPS = "ops"
    ADMIN = "admin"


NAME = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,99}$")
"""A gateway's key name may be the CloudEvents ``source`` its AMQP commands carry (``gateway/web``):
then it reads over HTTP the orders it placed over AMQP."""
_HEX = re.compile(r"^[0-9a-f]{64}$")


def digest(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return hashlib.sha256(key.strip().encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: Role
    sha256: str

    @classmethod
    def parse(cls, entry: str) -> ApiKey:
        """``name:role:sha256`` (never the key itself)."""
        parts = entry.strip().split(":")
        if len(parts) != 3:
            raise ValueError("an API_KEYS entry is name:role:sha256 (python -m chassis.keys hash)")
        name, role, sha = (p.strip() for p in parts)
        if not NAME.match(name):
            raise ValueError(
                f"API key name {name!r}: lower-case letters, digits, '.', '_', '-', '/', up to 100"
            )
        if role not in Role.__members__.values():
            raise ValueError(f"API key {name}: role must be one of {', '.join(Role)}")
        if not _HEX.match(sha.lower()):
            raise ValueError(f"API key {name}: the hash must be 64 hex digits (python -m chassis.keys hash)")
        return cls(name=name, role=Role(role), sha256=sha.lower())

    @property
    def entry(self) -> str:
        return f"{self.name}:{self.role}:{self.sha256}"


def parse_all(value: Any) -> tuple[ApiKey, ...]:
    """API_KEYS as configured: a comma-separated string, a JSON list, or ApiKey values already."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [e for e in text.split(",") if e.strip()]
    keys = tuple(v if isinstance(v, ApiKey) else ApiKey.parse(str(v)) for v in value)
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ValueError("API key names must be unique: the name is recorded as the actor")
    return keys


def find(keys: tuple[ApiKey, ...], key: str) -> ApiKey | None:
    """The entry a key matches, comparing its hash with every entry in constant time."""
    wanted = digest(key)
    found = None
    for entry in keys:
        if hmac.compare_digest(entry.sha256, wanted) and found is None:
            found = entry
    return found


# Local runs and tests (CONTRACT §3): the key is the name plus "-key"; refused in production.
DEV_KEYS: tuple[ApiKey, ...] = tuple(
    ApiKey(name=name, role=role, sha256=digest(f"{name}-key"))
    for name, role in (
        ("dev-gateway", Role.GATEWAY),
        ("dev-marketplace", Role.GATEWAY),
        ("dev-ops", Role.OPS),
        ("dev-admin", Role.ADMIN),
    )
)
DEV_HASHES = frozenset(k.sha256 for k in DEV_KEYS)


def main(argv: list[str]) -> int:
    usage = (
        "usage: python -m chassis.keys hash [KEY]   (KEY read from stdin when not given)\n"
        "       python -m chassis.keys new NAME ROLE"
    )
    if argv[:1] == ["hash"] and len(argv) <= 2:
        key = argv[1] if len(argv) == 2 else sys.stdin.readline()
        if not key.strip():
            print(usage, file=sys.stderr)
            return 2
        print(digest(key))
        return 0
    if argv[:1] == ["new"] and len(argv) == 3:
        key = secrets.token_urlsafe(32)
        entry = ApiKey.parse(f"{argv[1]}:{argv[2]}:{digest(key)}")
        print(f"key (give it to the caller, store it nowhere else): {key}")
        print(f"API_KEYS entry: {entry.entry}")
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
