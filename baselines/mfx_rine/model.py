"""RINE's trainable network and loss (Koutlis & Papadopoulos, ECCV 2024), written from the paper and a
reading of the official code (mever-team/rine, ``src/models.py`` and ``src/utils.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def projection(in_dim: int, dim: int, layers: int, dropout: float) -> nn.Sequential:
    """``Dropout`` then ``layers`` x (``Linear``, ``ReLU``, ``Dropout``): RINE's two projections."""
    steps: list[nn.Module] = [nn.Dropout(dropout)]
    for i in range(layers):
        steps += [nn.Linear(in_dim if i == 0 else dim, dim), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*steps)


class RINEHead(nn.Module):
    """Intermediate class tokens -> projection -> importance-weighted sum over blocks -> projection -> logit.

    The Trainable Importance Estimator is ``alpha`` ``(1, blocks, dim)``: a
    softmax over blocks *per feature dimension*, so each dimension of the
    forgery-aware space picks its own mix of blocks.
    """

    def __init__(self, blocks: int, width: int, dim: int, layers: int, dropout: float):
        super().__init__()
        self.first = projection(width, dim, layers, dropout)
        self.alpha = nn.Parameter(torch.randn(1, blocks, dim))
        self.second = projection(dim, dim, layers, dropout)
        self.classifier = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, 1))

    def forward(self, class_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, blocks, width)`` -> ``(logit (N,), embedding (N, dim))``."""
        projected = self.first(class_tokens.float())
        pooled = (torch.softmax(self.alpha, dim=1) * projected).sum(dim=1)
        embedding = self.second(pooled)
        return self.classifier(embedding).reshape(-1), embedding

    def block_importance(self) -> torch.Tensor:
        """Mean softmax weight of each block over the feature dimensions ``(blocks,)``."""
        return torch.softmax(self.alpha.detach(), dim=1)[0].mean(dim=1)


def supervised_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020), one view per image, on L2-normalised embeddings.

    For each anchor: minus the mean, over the other images of its class, of the
    log-softmax of its similarities (/ temperature) to every other image.
    Anchors without a same-class partner contribute 0 (and still count in the
    mean), as in the reference implementation RINE uses.
    """
    features = F.normalize(embeddings.float(), dim=-1)
    n = features.shape[0]
    logits = features @ features.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(n, dtype=torch.bool, device=features.device)
    positives = (labels.reshape(-1, 1) == labels.reshape(1, -1)) & not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(dim=1, keepdim=True))
    counts = positives.sum(dim=1).clamp(min=1)
    return -((log_prob * positives).sum(dim=1) / counts).mean()


def rine_loss(factor: float, temperature: float):
    """RINE's objective on packed outputs ``[logit, embedding]``: summed BCE + ``factor`` x SupCon."""

    def loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logit, embedding = outputs[:, 0], outputs[:, 1:]
        bce = F.binary_cross_entropy_with_logits(logit.float(), labels.float(), reduction="sum")
        if factor == 0:
            return bce
        return bce + factor * supervised_contrastive(embedding, labels, temperature)

    return loss
