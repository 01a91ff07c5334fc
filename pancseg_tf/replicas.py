"""Sums over the replicas of a data-parallel step, for losses defined on the global batch.

Under a `tf.distribute` strategy with several replicas (`MirroredStrategy` on several GPUs,
`MultiWorkerMirroredStrategy`, TPUs), Keras runs the loss on each replica's share of the
global batch. A loss that is a mean over samples needs nothing more: Keras divides each
replica's mean by the number of replicas and the optimizer sums the gradients. A loss that sums
over the batch before a division (the batch Jaccard and Dice of `pancseg_tf.losses`) does: its
sums must span the global batch, so they are summed over the replicas before the division.

`sum_over_replicas` does that with the replica context's all-reduce, whose gradient is again an
all-reduce sum. With Keras' scaling this gives each replica's step exactly its share of the
one-device step on the global batch: a replica's loss is `c_r L / R`, where `L` is the
global-batch loss (the same on every replica) and `c_r` that replica's reduction factor (1, or
its mean sample weight); the gradient that reaches a replica's own sums is the all-reduce of
`c_r / R dL/dS` over replicas, `mean_r(c_r) dL/dS`, and the optimizer's sum over replicas of
`mean_r(c_r) dL/dS dS_r/dw` is `mean_r(c_r) dL/dw`, the one-device gradient (for equal
per-replica batch sizes).

Only the TensorFlow backend has replicas in this sense; it is imported here lazily, so the
losses stay free of TensorFlow. Under JAX's `keras.distribution` a loss already sees the
global batch as one (sharded) array, and elsewhere (one device, TensorFlow's cross-replica
context, other backends) the values come back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

__all__ = ["sum_over_replicas"]


def _replica_context() -> Any:
    """The TensorFlow replica context of a step with several replicas, else None."""
    if keras.config.backend() != "tensorflow":
        return None
    import tensorflow as tf

    # None in the cross-replica context (in `strategy.scope()` but outside `strategy.run`),
    # where a tensor is not one replica's share; the default context has one replica.
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync < 2:
        return None
    return context


def sum_over_replicas(values: Sequence[Any]) -> list[Any]:
    """Each value summed over the replicas of the running step (one all-reduce for all).

    Every replica must call it at the same point of its step with values of the same shapes
    (as a loss in a Keras or `tf.distribute` step does); the sum has a gradient.

    Args:
        values: Tensors (e.g. float32 scalars) of this replica's share of the global batch.

    Returns:
        The values summed over every replica of every worker, in the same order; the values
        themselves outside a step with several TensorFlow replicas.
    """
    values = list(values)
    context = _replica_context()
    if context is None or not values:
        return values
    import tensorflow as tf

    return list(context.all_reduce(tf.distribute.ReduceOp.SUM, values))
