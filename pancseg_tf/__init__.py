"""pancseg_tf: pancreas segmentation in CT and MRI with recurrent neural contextual learning.

Importing the package does not import TensorFlow; the model, training and serving modules do.

Reference:
    Cai J., Lu L., Xie Y., Xing F., Yang L. "Improving Deep Pancreas Segmentation in CT and MRI
    Images via Recurrent Neural Contextual Learning and Direct Loss Function." MICCAI 2017,
    arXiv:1707.04912.
"""

from pancseg_tf._version import __version__
from pancseg_tf.errors import PancsegError

__all__ = ["PancsegError", "__version__"]
