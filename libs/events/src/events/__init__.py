"""The OMS message contract and the plumbing every service shares.

- ``envelope``: the CloudEvents 1.0 envelope every message travels in.
- ``names``: exchanges, routing keys and CloudEvents types.
- ``orders``, ``inventory``, ``payments``, ``shipping``, ``notifications``: the events each
  service publishes (past tense) and the commands it accepts (imperative).
- ``topology``: every exchange and queue, declared the same way by every service.
- ``broker``, ``outbox``, ``inbox``, ``db``, ``logs``, ``telemetry``, ``web``: shared plumbing.
"""
