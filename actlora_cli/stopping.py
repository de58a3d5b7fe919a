"""probe.steps=auto: when the activation probe may stop. After each batch from probe.min_steps on, the rule
looks at the per-batch, per-layer means seen so far (all-reduced: every DDP rank decides alike) and stops
once the plan the config implies is resolved:

- its boundary, the last layer in against the first left out, is apart by more than twice the standard
  error of their difference over the same batches (paired: the test ``rank`` records in selection.json's
  boundary, on raw values), and
- the plan made from the first n-3, n-2, n-1 and n batches is the same (it has settled, not just crossed).

The cut the boundary lies at: rank.k for the scores strategy; L - k for inverse (its bottom-k is the
complement of the top L-k); for rank.tau, the k that tau picks from the running scores (which may move from
check to check; the settled-plan test covers that). A plan that does not depend on the scores (rank.layers,
a plan by position, k = all, or a cut at every layer) is resolved at the first check. With no rule at all
(no rank.k, tau or layers: the plan is chosen later) nothing can be resolved and the probe runs to the cap.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import RankSection
from .selection import POSITIONAL, boundary, k_for_tau, min_max, paired_noise, ranking

STABLE_BATCHES = 4  # the plan must be the same from this many consecutive prefixes of the batches


class AutoStop:
    """The stop rule: call it with the (n, L) per-batch means after each batch; True when the probe may stop.
    ``resolved`` says whether it did, ``last`` holds the latest check's boundary (for scores.json)."""

    def __init__(self, rank: RankSection, min_steps: int, max_steps: int):
        self.rank = rank
        self.first_check = min(min_steps, max_steps)
        self.resolved = False
        self.last: dict[str, Any] | None = None
        # the plan does not depend on the scores: nothing to wait for
        self.independent = (
            rank.layers is not None or rank.k == "all" or (rank.k is not None and rank.strategy in POSITIONAL)
        )
        self.nothing_to_resolve = rank.layers is None and rank.k is None and rank.tau is None

    def cut(self, raw: list[float]) -> int:
        """How many of the ranking's top layers the plan's boundary lies after."""
        if self.rank.tau is not None:
            return k_for_tau(min_max(raw)[0], self.rank.tau)
        assert isinstance(self.rank.k, int)
        cut = len(raw) - self.rank.k if self.rank.strategy == "inverse" else self.rank.k
        return max(0, min(cut, len(raw)))  # a k the model lacks is rank's error to report

    def plan(self, raw: list[float]) -> tuple[int, frozenset[int]]:
        cut = self.cut(raw)
        return cut, frozenset(ranking(min_max(raw)[0])[:cut])

    def __call__(self, means: torch.Tensor) -> bool:
        n, num_layers = means.shape
        if n < self.first_check or self.nothing_to_resolve:
            return False
        if self.independent:
            self.resolved = True
            return True
        means = means.detach().to("cpu", torch.float64)
        # the running A_l after each of the last STABLE_BATCHES batches (prefixes of 1.. batches)
        prefix = torch.cumsum(means, dim=0) / torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(1)
        plans = [self.plan(prefix[m - 1].tolist()) for m in range(max(1, n - STABLE_BATCHES + 1), n + 1)]
        cut, layers = plans[-1]
        raw = prefix[-1].tolist()
        stderr = (means.std(dim=0) / n**0.5).tolist()  # as activation_norms records it
        settled = n >= STABLE_BATCHES and all(p == plans[-1] for p in plans)  # never on fewer prefixes
        if not 1 <= cut < num_layers:  # every layer (or none) chosen: no boundary
            self.last = {"cut": cut, "layers": sorted(layers), "settled": settled}
            self.resolved = settled
            return settled
        per_batch = means.tolist()
        edge = boundary(cut, raw, stderr, ranking(min_max(raw)[0]), paired_noise(per_batch))
        assert edge is not None
        apart = edge["gap"] > 2 * edge["noise"]
        self.last = {"cut": cut, "layers": sorted(layers), "settled": settled, **edge}
        self.resolved = apart and settled
        return self.resolved
