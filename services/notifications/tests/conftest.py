from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from chassis.db import make_engine, make_sessionmaker, messaging_metadata
from notifications.channels import Outgoing
from notifications.config import Settings
from notifications.db import Base


@pytest.fixture
async def sessions(tmp_path):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/notifications.db")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(messaging_metadata.create_all)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def settings() -> Settings:
    return Settings(database_url="sqlite://", environment="test")


@dataclass
class RecordingChannel:
    """A channel adapter that keeps what it was given; ``fail_with`` makes the next sends raise."""

    channel: str
    sent: list[Outgoing] = field(default_factory=list)
    fail_with: list[Exception] = field(default_factory=list)

    async def send(self, message: Outgoing) -> str:
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.sent.append(message)
        return f"{self.channel}-{len(self.sent)}"


@pytest.fixture
def channels() -> dict[str, RecordingChannel]:
    return {name: RecordingChannel(name) for name in ("email", "sms", "push")}
