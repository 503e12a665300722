"""Sampled softmax with logQ correction: a next-item loss whose memory does not grow with the
catalogue.

Negatives are drawn from a mix of the training popularity and the uniform distribution
(:class:`NegativeSampler`), ``num_negatives`` of them shared by the batch. Popular items are the
hard negatives a uniform sample rarely holds, but sampling them often would push their scores
down too far; subtracting ``log(K q_j)`` (``K`` draws, ``q_j`` the chance to draw item ``j``)
from each sampled logit corrects that: ``exp(o_pos) + sum_j exp(o_j - log(K q_j))`` is an
unbiased estimate of the full softmax's normaliser, so the loss approaches full-softmax
cross-entropy as ``K`` grows (Bengio and Senecal 2008; Yi et al. 2019, "logQ correction").
Memory is O(N x K) for N rows (with the repeat bias O(N x (H + K)), H history items), plus
one [V] table of sampling probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: the share of the sampling distribution that is uniform over the catalogue: items without
#: training events are still drawn, and no item's correction is unbounded
UNIFORM_SHARE = 0.1


@dataclass(frozen=True)
class NegativeSampler:
    """Draws item indices 1..V-1 with probabilities ``probs`` [V] (``probs[0]`` = 0: padding)."""

    probs: Tensor
    cdf: Tensor

    @classmethod
    def from_counts(cls, counts: Tensor, uniform_share: float = UNIFORM_SHARE) -> NegativeSampler:
        """``counts`` [V] (index 0 = padding, ignored) mixed with ``uniform_share`` of the
        uniform distribution over items 1..V-1 (all uniform when every count is 0)."""
        c = counts.double().clamp(min=0).clone()
        c[0] = 0
        n = len(c) - 1
        uniform = torch.ones_like(c)
        uniform[0] = 0
        uniform /= max(1, n)
        total = c.sum()
        share = uniform_share if total > 0 else 1.0
        pop = c / total if total > 0 else torch.zeros_like(c)
        probs = (1 - share) * pop + share * uniform
        cdf = probs.cumsum(0)
        cdf /= cdf[-1].clone()
        return cls(probs.float(), cdf)

    @classmethod
    def from_targets(cls, targets: Tensor, n_items: int) -> NegativeSampler:
        """The sampler of training ``targets`` (any shape; 0 = no target) over ``n_items``."""
        t = targets.reshape(-1).long().cpu()
        return cls.from_counts(torch.bincount(t[t > 0], minlength=n_items)[:n_items])

    def to(self, device: torch.device | str) -> NegativeSampler:
        return NegativeSampler(self.probs.to(device), self.cdf.to(device))

    def sample(self, k: int, device: torch.device | str) -> Tensor:
        """[k] item indices drawn with replacement (never padding: ``probs[0]`` is 0)."""
        u = torch.rand(k, dtype=torch.float64, device=self.cdf.device)
        idx = torch.searchsorted(self.cdf, u, right=True).clamp(1, len(self.cdf) - 1)
        return idx.to(device)


def sampled_logq_loss(
    hidden: Tensor,
    targets: Tensor,
    embeddings: Tensor,
    bias: Tensor | None,
    num_negatives: int,
    sampler: NegativeSampler,
    repeat: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Cross-entropy of each row's target against ``num_negatives`` negatives drawn from
    ``sampler`` (shared by the batch), each sampled logit minus ``log(num_negatives * q)``.
    A negative drawn ``c`` times enters once with ``log(c)`` added (the same loss as ``c``
    copies), so the repeat offsets are matched in O(N x (H + K)) memory.

    ``hidden`` [N, d], ``targets`` [N], ``embeddings`` [V, d], ``bias`` [V]; ``repeat``: the
    history items [N, H] and their learned offsets [N, H]. Negatives equal to a row's target
    (accidental hits) are masked out.
    """
    device = hidden.device
    drawn = sampler.sample(num_negatives, device)  # [K]
    # each distinct negative once, its logit + log(times drawn): the same loss as K copies
    negatives, times = torch.unique(drawn, sorted=True, return_counts=True)  # [U]
    probs = sampler.probs.to(device)[negatives]
    offset = torch.log(times.float()) - torch.log(num_negatives * probs)  # [U]
    pos = (hidden * embeddings[targets]).sum(-1, keepdim=True)  # [N, 1]
    neg = hidden @ embeddings[negatives].T  # [N, U]
    if bias is not None:
        pos = pos + bias[targets].unsqueeze(1)
        neg = neg + bias[negatives].unsqueeze(0)
    if repeat is not None:  # history items [N, H] and their offsets [N, H]: O(N x (H + U))
        hist, vals = repeat
        pos = pos + ((hist == targets[:, None]) * vals).sum(1, keepdim=True)
        at = torch.searchsorted(negatives, hist).clamp(max=len(negatives) - 1)  # [N, H]
        hit = negatives[at] == hist
        neg = neg + torch.zeros_like(neg).scatter_add(1, at, (vals * hit).to(neg.dtype))
    neg = (neg.float() + offset[None, :].float()).masked_fill(
        negatives[None, :] == targets[:, None], torch.finfo(torch.float32).min
    )
    logits = torch.cat([pos.float(), neg], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def sparse_offset_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    cols: Tensor,
    offsets: Tensor,
    valid: Tensor,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``F.cross_entropy(logits + offsets scattered at cols, targets, label_smoothing)`` without
    building the offset logits: ``logits`` [N, C] (no gradient flows through them), ``targets``
    [N], ``cols`` [N, K] and their ``offsets`` [N, K] (the gradient flows to these); ``valid``
    [N, K] marks the slots that count, whose columns are distinct within a row.

    One forward pass over ``logits`` (their log-sum-exp and mean) and O(N x K) after it, so a
    sparse correction fitted on top of a full-softmax model costs a fraction of its loss.
    """
    z = logits.detach().float()
    keep = valid.float()
    off = offsets.float() * keep
    lse0 = torch.logsumexp(z, dim=1)  # [N]
    p = torch.exp(z.gather(1, cols) - lse0[:, None]) * keep  # [N, K] the slots' probabilities
    # log(sum of exp(z + offsets)) = lse0 + log(1 + sum_k p_k (e^{o_k} - 1)); the sum is > -1
    lse = lse0 + torch.log1p((p * torch.expm1(off.clamp(max=80.0))).sum(1).clamp(min=-1 + 1e-7))
    own = (cols == targets[:, None]) & valid
    z_target = z.gather(1, targets[:, None]).squeeze(1) + (off * own).sum(1)
    loss = lse - z_target
    if label_smoothing:
        mean = z.mean(1) + off.sum(1) / z.shape[1]
        loss = (1 - label_smoothing) * loss + label_smoothing * (lse - mean)
    return loss.mean().to(offsets.dtype)
