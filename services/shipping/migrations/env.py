from chassis.migrations import run_env
from shipping.db import Base

run_env(Base.metadata)
