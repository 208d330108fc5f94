"""Multi-proxy identity memory of MEVB: a "mean" and a "hard" proxy per training identity.

The memory lives over x̂ = normalise([BN f_cls; BN f_proj]) (width dim = D + P). The loss reads
logits x̂ · Mᵀ / τ against every proxy set; the proxies themselves are never trained by gradients:
they are rebuilt from class centroids at the start of an epoch and moved towards the batch after
every step with a momentum update, both outside autograd.

Update rules (``MODEL.MEMORY.UPDATE``):

* ``"sequential"`` (the authors' ``cm.py``): the mean proxy of each sample's identity is moved towards
  that sample, one sample after another in batch order (renormalised after each), then once more
  towards the identity's batch mean; the hard proxy moves towards the identity's sample with the
  lowest cosine to the mean proxy as it stands after the per-sample moves.
* ``"batch_mean"``: one move of the mean proxy towards the batch mean, and the hard sample chosen
  against the mean proxy before the update (this project's earlier rule).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

MEAN_PROXY = 0
HARD_PROXY = 1
UPDATE_RULES = ("sequential", "batch_mean")


class MultiProxyMemory(nn.Module):
    """Proxies ``(num_classes, num_proxies, dim)``, L2-normalised rows, kept as a buffer (checkpointed).

    Proxy 0 is the mean proxy; proxy 1 (when ``num_proxies == 2``) is the hard proxy.
    """

    def __init__(self, num_classes: int, dim: int, num_proxies: int = 2, temperature: float = 0.05,
                 momentum: float = 0.1, update_rule: str = "sequential", max_instances: int | None = None):
        """``max_instances``: the most samples one identity has in an update's batch (K of the P x K
        sampler); it bounds the per-sample steps of the sequential rule (None: the batch size)."""
        super().__init__()
        if update_rule not in UPDATE_RULES:
            raise ValueError(f"MODEL.MEMORY.UPDATE must be one of {list(UPDATE_RULES)}, got {update_rule!r}")
        if max_instances is not None and max_instances < 1:
            raise ValueError(f"max_instances must be >= 1 or None, got {max_instances}")
        if num_proxies not in (1, 2):
            raise ValueError(
                f"MODEL.MEMORY.NUM_PROXIES must be 1 (mean proxy) or 2 (mean + hard proxy), got {num_proxies}"
            )
        if temperature <= 0:
            raise ValueError(f"MODEL.MEMORY.TEMPERATURE must be > 0, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"MODEL.MEMORY.MOMENTUM must be in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.dim = dim
        self.num_proxies = num_proxies
        self.temperature = temperature
        self.momentum = momentum
        self.update_rule = update_rule
        self.max_instances = max_instances
        # Zeros until the first rebuild: every logit is 0 (a uniform softmax) rather than random noise.
        self.register_buffer("proxies", torch.zeros(num_classes, num_proxies, dim))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, dim={self.dim}, num_proxies={self.num_proxies}, "
                f"temperature={self.temperature}, momentum={self.momentum}, update_rule={self.update_rule!r}")

    def logits(self, x_hat: torch.Tensor) -> torch.Tensor:
        """x_hat (B, dim) L2-normalised -> (B, num_proxies, C) cosine similarities / temperature."""
        if x_hat.dim() != 2 or x_hat.shape[1] != self.dim:
            raise ValueError(f"memory features must be (B, {self.dim}), got {tuple(x_hat.shape)}")
        proxies = self.proxies.to(x_hat.dtype)
        # (B, dim) x (C, N, dim) -> (B, N, C) in one contraction; the proxies carry no gradient.
        return torch.einsum("bd,cnd->bnc", x_hat, proxies) / self.temperature

    def _check_shapes(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"memory features must be (N, {self.dim}), got {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"labels must be ({features.shape[0]},), got {tuple(labels.shape)}")

    def _check_inputs(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Shapes and the label range (the range check reads labels back to the host: rebuild only)."""
        self._check_shapes(features, labels)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"memory labels must lie in [0, {self.num_classes}), got range "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )

    @torch.no_grad()
    def update(self, x_hat: torch.Tensor, labels: torch.Tensor) -> None:
        """Momentum update for every identity present in the batch (vectorised, no autograd).

        x_hat (B, dim) L2-normalised features (gathered over DDP ranks by the caller); labels (B,).
        With momentum m, a move of proxy P towards x is P <- normalise(m·P + (1−m)·x); the rule
        (``update_rule``, see the module docstring) says which moves happen. Ties of the hard sample
        go to the earliest sample.

        Runs every training step, so it never reads a tensor back to the host (no sync, one graph
        under torch.compile): only shapes are checked here; the labels are the training labels the
        loss has already indexed with.
        """
        self._check_shapes(x_hat, labels)
        if labels.numel() == 0:
            return
        x_hat = x_hat.to(self.proxies.device, self.proxies.dtype)
        labels = labels.to(self.proxies.device).long()
        num_classes = self.num_classes
        # index_add instead of bincount: bincount's output length depends on the data.
        counts = torch.zeros(num_classes, dtype=x_hat.dtype, device=x_hat.device)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=x_hat.dtype))
        present = counts > 0                                                  # (C,)
        sums = torch.zeros(num_classes, self.dim, dtype=x_hat.dtype, device=x_hat.device)
        sums.index_add_(0, labels, x_hat)
        batch_mean = sums / counts.clamp_min(1)[:, None]                      # (C, dim)

        old = self.proxies.clone()
        mean = old[:, MEAN_PROXY]
        if self.update_rule == "sequential":
            mean = self._per_sample_moves(mean, x_hat, labels)
        # The hard sample is chosen against the mean proxy as it stands now: before this step's update
        # ("batch_mean") or after the per-sample moves ("sequential").
        reference = mean
        mean = self._move(mean, batch_mean, present)
        self.proxies[:, MEAN_PROXY] = mean
        if self.num_proxies == 2:
            cosine = (x_hat * reference[labels]).sum(dim=1)                   # (B,)
            lowest = torch.full((num_classes,), float("inf"), dtype=cosine.dtype, device=cosine.device)
            lowest = lowest.scatter_reduce(0, labels, cosine, reduce="amin", include_self=True)
            is_lowest = cosine == lowest[labels]
            sample_index = torch.arange(labels.numel(), device=labels.device)
            candidate = torch.where(is_lowest, sample_index, torch.full_like(sample_index, labels.numel()))
            first = torch.full((num_classes,), labels.numel(), dtype=torch.long, device=labels.device)
            first = first.scatter_reduce(0, labels, candidate, reduce="amin", include_self=True)
            hardest = x_hat[first.clamp_max(labels.numel() - 1)]               # (C, dim); absent rows unused
            self.proxies[:, HARD_PROXY] = self._move(old[:, HARD_PROXY], hardest, present)

    def _move(self, proxies: torch.Tensor, targets: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """proxies (C, dim) moved towards targets (C, dim) on the rows where ``where`` (C,) bool holds."""
        m = self.momentum
        moved = F.normalize(m * proxies + (1 - m) * targets, dim=1)
        return torch.where(where[:, None], moved, proxies)

    def _per_sample_moves(self, mean: torch.Tensor, x_hat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The authors' per-sample moves: mean (C, dim) moved towards each sample in batch order.

        A sample's occurrence rank r (how many earlier samples share its label) says at which step it
        moves its identity's proxy; the samples of one step have distinct labels, so each step is one
        vectorised move. The step count is a Python int (``max_instances`` or B): no host sync.
        """
        batch = labels.numel()
        same = labels[:, None] == labels[None, :]
        earlier = torch.ones(batch, batch, dtype=torch.bool, device=labels.device).tril(-1)
        occurrence = (same & earlier).sum(dim=1)                               # (B,)
        steps = min(batch, self.max_instances or batch)
        if steps < batch:
            # Device-side check: an identity with more than max_instances samples would skip moves.
            torch._assert_async(occurrence.max() < steps,
                                "MultiProxyMemory.update: an identity has more samples than max_instances")
        spare = self.num_classes  # a dummy row that collects the samples of other steps
        for step in range(steps):
            chosen = occurrence == step
            rows = torch.where(chosen, labels, torch.full_like(labels, spare))
            targets = torch.zeros(spare + 1, self.dim, dtype=x_hat.dtype, device=x_hat.device)
            targets.index_add_(0, rows, x_hat)
            hit = torch.zeros(spare + 1, dtype=torch.bool, device=x_hat.device)
            hit[rows] = True
            mean = self._move(mean, targets[:spare], hit[:spare])
        return mean

    @torch.no_grad()
    def rebuild(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Every proxy of an identity <- its normalised class centroid.

        features (N, dim) of the whole training set (one row per tracklet, eval-mode memory_feat);
        labels (N,). Identities without any feature keep their proxies (a warning says how many).
        """
        self._check_inputs(features, labels)
        features = features.to(self.proxies.device, self.proxies.dtype)
        labels = labels.to(self.proxies.device).long()
        counts = torch.bincount(labels, minlength=self.num_classes)
        sums = torch.zeros(self.num_classes, self.dim, dtype=features.dtype, device=features.device)
        sums.index_add_(0, labels, features)
        centroids = F.normalize(sums, dim=1)
        present = counts > 0
        missing = int((~present).sum())
        if missing:
            logger.warning("Memory rebuild: %d of %d identities had no feature; their proxies are kept",
                           missing, self.num_classes)
        rebuilt = centroids[:, None, :].expand(-1, self.num_proxies, -1)
        self.proxies.copy_(torch.where(present[:, None, None], rebuilt, self.proxies))
