from events.deadletters import deadletter_metadata
from events.migrations import run_env
from orders.db import Base

run_env(Base.metadata, deadletter_metadata)
