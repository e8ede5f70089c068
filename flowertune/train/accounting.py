"""Record-level ε of DP-SGD (``train.dp-sgd.*``), with the RDP accountant of Google's ``dp-accounting``.

The mechanism (:mod:`flowertune.train.dpsgd`): every optimizer step of a node's local training takes each of
its training examples independently with probability ``q`` (Poisson sampling), clips each sampled example's
gradient to L2 norm ``C`` and adds Gaussian noise of standard deviation ``sigma * C`` to their sum. One step
is the sampled Gaussian mechanism; a node that trained ``k`` local rounds of ``s`` steps has released ``k * s``
of them, composed (``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), k * s)``).

Neighbouring datasets differ by one training record of one node, added or removed (the relation the Poisson
subsampling analysis is for); the number of records a node holds is treated as public (it declares it at
check-in, as Opacus and TF Privacy take ``len(dataset)`` to be). Everything the node sends after training is
a function of the noised steps (post-processing), except what the node reports besides the adapter: it
leaves out its training loss, speed and memory under DP-SGD (``client_tasks.train``). If the size must stay
secret, one record replaced is one removed and one added: (2ε, (1 + e^ε)δ) by group privacy. What is not covered: the
held-out split, whose evaluation loss the node reports unnoised (``train.eval-every-round=0`` leaves it
out), and side channels such as time and memory.

No torch and no flwr here: ``flowertune run --dry-run`` prints the planned ε without loading either.
"""

from __future__ import annotations

import functools

NEIGHBOURING = ("one record of one node's training split added or removed, its size public (replaced, if the "
                "size is secret: 2ε)")
SAMPLING = "Poisson sampling of each node's records at every local step"


@functools.lru_cache(maxsize=4096)
def record_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε at ``delta`` of ``steps`` DP-SGD steps (Poisson rate ``sample_rate``, multiplier ``noise_multiplier``)."""
    if steps <= 0:
        return 0.0
    import dp_accounting
    from dp_accounting import rdp

    step = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(step, steps))
    return float(acc.get_epsilon(delta))


def rounds_within(noise_multiplier: float, sample_rate: float, steps_per_round: int, delta: float, target: float,
                  limit: int) -> int:
    """How many local rounds (of ``steps_per_round`` steps) one node can train within ``target`` (at most
    ``limit``)."""
    n = 0
    while n < limit and record_epsilon(noise_multiplier, sample_rate, (n + 1) * steps_per_round, delta) <= target:
        n += 1
    return n
