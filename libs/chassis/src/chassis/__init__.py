"""The service chassis: what every OMS service runs on (outbox, inbox, broker, runtime, web, cli,
migrations, dead letters). Outside subscribers need only the contract, ``events``."""
