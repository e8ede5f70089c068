"""The server's strategy stack as layers in Flower's wrapper convention (built by ``federation/strategies.py``).

- ``base``: the :class:`Layer` convention, the shared :class:`StackContext` and the round's ledger
- ``meter``: bytes on the wire; ``codec``: the wire codec and the downlink mirror; ``gate``: reply checks and
  order; ``sampling``: seeded, sorted, time-bounded sampling
"""
