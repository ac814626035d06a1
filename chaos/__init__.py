"""Sentinel's fault-injection suite: ``chaos/run.py`` (``make chaos``) and its parts.

- :mod:`chaos.cluster`: a restartable PostgreSQL of our own (the embedded
  binaries, initdb'd in a temporary folder) and a PgBouncer in front of it;
- :mod:`chaos.worker`: one worker process calling ``Sentinel.once()`` and
  recording every function start and finish in an independent ledger;
- :mod:`chaos.checker`: reads the ledger, the execution history and the
  workers' logs and checks the SPEC invariants;
- :mod:`chaos.run`: the harness (workers, fault injector, operator, summary).
"""
