"""The inference form of a model: every convolution followed by batch normalisation folded into
one convolution with a bias.

In inference mode a batch normalisation after a convolution is an affine map per channel,
``y = (conv(x, W) - mean) * gamma / sqrt(var + eps) + beta``, so it equals one convolution
``conv(x, W * s) + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)`` (plus ``b * s``
where the convolution has its own bias ``b``). The slice CNN has 19 such pairs; folded, the
normalisation's two passes over every activation map are gone (`benchmarks/run.py`'s roofline
part measures the time).

`inference_graph` builds that form as a Keras functional graph over the model's own layers
and variables: nothing is copied, the folded kernel and bias are computed from the live
weights at every call (a few thousand multiplications next to the convolutions' billions), so
the form never goes stale while a model trains between validations. The results equal the
model's in inference mode up to float32 rounding (the products are formed in another order);
a model computing in bfloat16 is left as it is (`foldable_pairs`).

Keras only (`keras`, `keras.ops`): it runs on every backend.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


class FoldedConvBatchNorm(keras.layers.Layer):
    """``conv`` then ``norm`` (inference mode) as one convolution with the folded kernel and
    bias, computed from the two layers' current variables at each call.

    Not registered and never saved: it exists only inside `inference_graph`'s graphs.
    """

    def __init__(self, conv, norm, **kwargs: Any) -> None:
        super().__init__(name=f"{conv.name}_folded", dtype=conv.dtype_policy, **kwargs)
        self.conv = conv
        self.norm = norm

    def call(self, inputs, training=None):
        conv, norm = self.conv, self.norm
        scale = ops.rsqrt(ops.cast(norm.moving_variance, "float32") + norm.epsilon)
        if norm.scale:
            scale = scale * ops.cast(norm.gamma, "float32")
        shift = -ops.cast(norm.moving_mean, "float32") * scale
        if norm.center:
            shift = shift + ops.cast(norm.beta, "float32")
        if conv.use_bias:
            shift = shift + ops.cast(conv.bias, "float32") * scale
        kernel = ops.cast(conv.kernel, "float32") * scale
        dtype = conv.compute_dtype
        outputs = conv.convolution_op(ops.cast(inputs, dtype), ops.cast(kernel, dtype))
        outputs = ops.add(outputs, ops.cast(ops.reshape(shift, (1, 1, 1, -1)), dtype))
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)


class _PassThrough(keras.layers.Layer):
    """Where a folded batch normalisation was: its input, unchanged."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def foldable_pairs(model) -> dict[int, Any]:
    """``{id(conv): norm}`` for every ``Conv2D -> BatchNormalization`` pair of ``model`` and of
    the functional models nested in it that can be folded: a 2D channels-last float32
    convolution without activation, called once, whose output goes only to a channels-last
    batch normalisation called once. (Under ``mixed_bfloat16`` nothing folds: the kernel
    scaled before its rounding to 8 bits of mantissa and the bias added in bfloat16 move
    probabilities by up to 0.2 where the normalisation, computed in float32, does not.)"""
    pairs: dict[int, Any] = {}
    for layer in _all_layers(model):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        try:
            # The functional graph's links (Keras attributes, not public API): a Keras without
            # them gets no fold, the model itself, never a wrong one.
            if len(layer._inbound_nodes) != 1 or layer.axis not in (-1, 3):
                continue
            parents = layer._inbound_nodes[0].parent_nodes
            conv = parents[0].operation if len(parents) == 1 else None
            single = conv is not None and (
                len(conv._inbound_nodes) == 1 and len(conv._outbound_nodes) == 1
            )
        except AttributeError:
            return {}
        if (
            type(conv) is keras.layers.Conv2D
            and conv.data_format == "channels_last"
            and conv.compute_dtype == "float32"
            and conv.activation in (None, keras.activations.linear)
            and not getattr(conv, "lora_enabled", False)
            and single
        ):
            pairs[id(conv)] = layer
    return pairs


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def inference_graph(model):
    """``model``'s inference form: the same function (inference mode, float rounding aside)
    with every `foldable_pairs` pair run as one `FoldedConvBatchNorm`.

    Every other layer is ``model``'s own object, called again in the new graph; nested
    functional models are rebuilt the same way. A model without a foldable pair, or one that
    is not functional, is returned as it is.

    Returns:
        A functional ``keras.Model`` with ``model``'s inputs and outputs (not a `SliceCNN` or
        `ContextualSegmenter`: an object to call, never to save or train).
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        return model
    pairs = foldable_pairs(model)
    if not pairs:
        return model
    norms = {id(norm) for norm in pairs.values()}

    def clone(layer):
        if id(layer) in pairs:
            return FoldedConvBatchNorm(layer, pairs[id(layer)])
        if id(layer) in norms:
            return _PassThrough(name=f"{layer.name}_folded", dtype=layer.dtype_policy)
        return layer

    return keras.models.clone_model(model, clone_function=clone, recursive=True)
