"""The studies' training loop: :mod:`tangentlab.training` (seeded minibatch streams, the
training step, :class:`~tangentlab.training.TrainingCheckpoint`), shared with the library."""

from ...training import (
    BatchStream,
    TrainingCheckpoint,
    accuracy,
    mean_loss,
    rng_state,
    set_rng_state,
    train_epochs,
    train_step,
)

__all__ = ["BatchStream", "TrainingCheckpoint", "accuracy", "mean_loss", "rng_state", "set_rng_state",
           "train_epochs", "train_step"]
