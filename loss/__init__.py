"""Training losses of SAS-VPReID and their config-driven builder."""
from loss.build import SASLoss, build_loss
from loss.shape import shape_prior_loss
from loss.softmax import framewise_cross_entropy, label_smoothed_cross_entropy, memory_loss
from loss.triplet import batch_hard_triplet, pairwise_euclidean

__all__ = [
    "SASLoss", "build_loss", "shape_prior_loss", "framewise_cross_entropy", "label_smoothed_cross_entropy",
    "memory_loss", "batch_hard_triplet", "pairwise_euclidean",
]
