import math

from flowertune.train.schedule import cosine_annealing, warmup_factor


def test_cosine_over_rounds_matches_flowertune_formula():
    assert cosine_annealing(200, 200, 5e-5, 1e-6) == 1e-6
    assert math.isclose(cosine_annealing(100, 200, 5e-5, 1e-6), (5e-5 + 1e-6) / 2)
    lrs = [cosine_annealing(r, 10, 1.0, 0.1) for r in range(1, 11)]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 1.0


def test_warmup():
    assert [warmup_factor(s, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
