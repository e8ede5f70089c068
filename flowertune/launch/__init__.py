"""Launching Flower for ``flowertune run``: the ``flwr`` environment, app directory and command (:mod:`.flwr`),
SuperLink connections (:mod:`.connections`), the log tee (:mod:`.logtee`) and the managed local SuperLink
(:mod:`.managed_superlink`)."""
