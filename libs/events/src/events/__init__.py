"""The OMS message contract: what an outside subscriber needs to read and write our messages.

- ``envelope``: the CloudEvents 1.0 envelope every message travels in.
- ``names``: exchanges, routing keys and CloudEvents types.
- ``orders``, ``inventory``, ``payments``, ``shipping``, ``notifications``: the events each
  service publishes (past tense) and the commands it accepts (imperative).
- ``topology``: every exchange and queue, declared the same way by every service.

This package needs only pydantic (``oms-events[amqp]`` adds aio-pika for ``topology.declare``): an
outside subscriber installs it to read our messages. The plumbing the services run on is ``chassis``.
"""
