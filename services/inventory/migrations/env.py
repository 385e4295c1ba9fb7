from chassis.migrations import run_env
from inventory.db import Base

run_env(Base.metadata)
