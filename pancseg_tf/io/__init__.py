"""Reading and writing volumes (NIfTI, DICOM series) with exact geometry, and cohort discovery."""

from pancseg_tf.io.cohorts import Case, ambiguous_slices, check_case_id, discover_cohort
from pancseg_tf.io.dicom import SeriesInfo, list_dicom_series, read_dicom_series
from pancseg_tf.io.nifti import read_nifti, write_nifti, write_volume
from pancseg_tf.io.read import read_volume
from pancseg_tf.io.volume import Volume

__all__ = [
    "Case",
    "SeriesInfo",
    "Volume",
    "ambiguous_slices",
    "check_case_id",
    "discover_cohort",
    "list_dicom_series",
    "read_dicom_series",
    "read_nifti",
    "read_volume",
    "write_nifti",
    "write_volume",
]
