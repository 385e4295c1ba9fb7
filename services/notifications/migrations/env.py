from chassis.migrations import run_env
from notifications.db import Base

run_env(Base.metadata)
