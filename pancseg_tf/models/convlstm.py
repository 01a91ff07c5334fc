"""`FusedConvLSTM2D`: Keras' ``ConvLSTM2D`` with each step's eight convolutions fused into two.

Keras' ConvLSTM cell splits its kernels into the four gates and runs eight convolutions per
step: four on the input, four on the previous output, each with ``filters`` output channels.
On the contextual model's maps (one input channel, 8 filters, 128 x 128 or 512 x 512) those are
tiny convolutions whose cost is mostly the call, not the arithmetic. Here a step runs one
convolution of the input and one of the previous output, each with all ``4 * filters`` gate
channels, adds the bias once and splits the sum into the gates: the same weights (same shapes,
names and order, so a model saved with either layer loads into the other), the same formula
(`keras.layers.ConvLSTM2D`'s, gates in Keras' order input, forget, candidate, output), and on
this machine's TensorFlow the same bits (tested); `benchmarks/run.py`'s roofline part measures
the time.

Only the step changes: training with ``dropout`` or ``recurrent_dropout`` (per-gate masks, which
the package never sets) runs Keras' own step. The cell class is derived at run time from the
cell Keras builds, so nothing here imports Keras' private modules; a Keras whose cell lacks the
attributes used here keeps its own step.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
from keras import ops

#: What the fused step reads from Keras' unbuilt cell (besides ``kernel``, ``recurrent_kernel``
#: and ``bias``, which its build makes); a cell without them keeps its own step.
_CELL_ATTRIBUTES = (
    "use_bias",
    "input_conv",
    "recurrent_conv",
    "activation",
    "recurrent_activation",
    "padding",
    "data_format",
    "dropout",
    "recurrent_dropout",
)


@functools.cache
def _fused_cell_class(stock: type) -> type:
    """A subclass of Keras' ConvLSTM cell class ``stock`` whose step runs two convolutions."""

    class FusedConvLSTMCell(stock):
        def call(self, inputs, states, training=False):
            dropping = 0.0 < self.dropout < 1.0 or 0.0 < self.recurrent_dropout < 1.0
            if (training and dropping) or self.data_format != "channels_last":
                return super().call(inputs, states, training=training)
            h_tm1, c_tm1 = states[0], states[1]
            z = self.input_conv(inputs, self.kernel, None, padding=self.padding)
            z = z + self.recurrent_conv(h_tm1, self.recurrent_kernel)
            if self.use_bias:
                z = z + self.bias
            z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
            i = self.recurrent_activation(z_i)
            f = self.recurrent_activation(z_f)
            c = f * c_tm1 + i * self.activation(z_c)
            o = self.recurrent_activation(z_o)
            h = o * self.activation(c)
            return h, [h, c]

    FusedConvLSTMCell.__name__ = FusedConvLSTMCell.__qualname__ = f"Fused{stock.__name__}"
    return FusedConvLSTMCell


@keras.saving.register_keras_serializable(package="pancseg_tf")
class FusedConvLSTM2D(keras.layers.ConvLSTM2D):
    """`keras.layers.ConvLSTM2D` (same arguments, weights and outputs) whose step runs one
    input and one recurrent convolution over all four gates instead of eight (module docstring).

    ``fused`` tells whether the fused step is in use (False only on a Keras whose cell lacks
    what it reads).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stock = type(self.cell)
        self.fused = all(hasattr(self.cell, name) for name in _CELL_ATTRIBUTES)
        if self.fused:
            # The cell is unbuilt and holds only its arguments: giving it the subclass changes
            # its step and nothing else (its config, variables and their order stay Keras').
            self.cell.__class__ = _fused_cell_class(stock)
