"""Installs pancseg_tf and its `pancseg` command."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "pancseg_tf" / "_version.py").read_text()
).group(1)

setup(
    name="pancseg-tf",
    version=VERSION,
    description=(
        "Pancreas segmentation in CT and MRI with a 2D CNN and bidirectional ConvLSTM "
        "context (Cai et al. 2017) in TensorFlow / Keras 3"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pancseg_tf", "pancseg_tf.*"]),
    # The named configs (training/configs/ links to them), so `--config quick` works installed;
    # the test data manifest for `python -m pancseg_tf.testdata fetch`.
    package_data={"pancseg_tf": ["configs/*.yaml", "testdata_manifest.tsv"]},
    install_requires=[
        "tensorflow>=2.18,<3",
        # TensorFlow 2.21 no longer pulls it in; the TensorBoard callback needs it.
        "tensorboard>=2.18",
        "keras>=3.6,<4",
        "numpy>=1.24",
        "scipy>=1.10",
        "nibabel>=5.0",
        "pydicom>=3.0",
        # JPEG 2000 and JPEG-LS decoders for compressed PACS exports.
        "pylibjpeg>=2.0",
        "pylibjpeg-openjpeg>=2.0",
        "Pillow>=9.0",
        "PyYAML>=6.0",
        "matplotlib>=3.6",
        # TF Serving's protos: `pancseg export` writes warm-up requests with them (and the demo
        # exports). Small, but it requires a tensorflow of its own version or newer.
        "tensorflow-serving-api>=2.18,<3",
    ],
    extras_require={
        # The gRPC client for TensorFlow Serving (`pancseg query`).
        "serving": ["tensorflow-serving-api>=2.18,<3", "grpcio>=1.60"],
        # benchmarks/run.py's peer part (MONAI's SliceInferer + BasicUNet); CPU torch is enough.
        "benchmarks": ["torch>=2.4", "monai>=1.4"],
        # `pancseg predict --output-format dicom-seg` (0.23: the first release on pydicom 3).
        "dicom-seg": ["highdicom>=0.23"],
        # `pancseg predict --runner ...` (Apache Beam; its `gcp` extra too for gs:// and Dataflow).
        "beam": ["apache-beam>=2.60"],
        "test": [
            "pytest>=7.4",
            "hypothesis>=6.80",
            "ruff>=0.5",
            "medpy>=0.5",
            "tensorflow-serving-api>=2.18,<3",
            "grpcio>=1.60",
            # tests/test_notebooks.py runs the Colab notebooks headless.
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            # tests/io/test_dicom_seg.py and the DICOM SEG output of predict.
            "highdicom>=0.23",
            # tests/test_beam.py runs the prediction pipeline on Beam's DirectRunner.
            "apache-beam>=2.60",
        ],
    },
    entry_points={"console_scripts": ["pancseg=pancseg_tf.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
