"""Reading and writing volumes (NIfTI, DICOM series) with exact geometry, and cohort discovery."""

from pancseg_tf.io.volume import Volume

__all__ = ["Volume"]
