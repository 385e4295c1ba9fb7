from chassis.deadletters import deadletter_metadata
from chassis.migrations import run_env
from orders.db import Base

run_env(Base.metadata, deadletter_metadata)
