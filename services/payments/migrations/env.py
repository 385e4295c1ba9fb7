from chassis.migrations import run_env
from payments.db import Base

run_env(Base.metadata)
