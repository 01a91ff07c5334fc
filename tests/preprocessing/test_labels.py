"""Label maps -> binary pancreas masks, presets and option parsing."""

import nibabel as nib
import numpy as np
import pytest

from pancseg_tf.errors import PancsegError
from pancseg_tf.preprocessing import LABEL_PRESETS, map_labels, parse_label_values

# One row of labels 0..8 -> mask, per preset or values.
LABELS = np.arange(9, dtype=np.uint8)


@pytest.mark.parametrize(
    "values, expected",
    [
        ("msd", [0, 1, 1, 0, 0, 0, 0, 0, 0]),  # pancreas 1 + tumour 2
        ("totalsegmentator", [0, 0, 0, 0, 0, 0, 0, 1, 0]),  # pancreas 7
        ("nih", [0, 1, 0, 0, 0, 0, 0, 0, 0]),
        ("nonzero", [0, 1, 1, 1, 1, 1, 1, 1, 1]),
        (None, [0, 1, 1, 1, 1, 1, 1, 1, 1]),
        ((2, 5), [0, 0, 1, 0, 0, 1, 0, 0, 0]),
        ([8], [0, 0, 0, 0, 0, 0, 0, 0, 1]),
    ],
)
def test_map_labels_table(values, expected):
    out = map_labels(LABELS, values)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_map_labels_keeps_shape_and_accepts_whole_number_floats():
    labels = np.array([[[0.0, 1.0], [2.0, 3.0]]], dtype=np.float32)  # (1, 2, 2)
    np.testing.assert_array_equal(map_labels(labels, "msd"), [[[0, 1], [1, 0]]])


@pytest.mark.parametrize("bad", [0.5, 1.25, np.nan])
def test_map_labels_rejects_non_integer_float_labels(bad):
    labels = np.array([0.0, 1.0, bad])
    with pytest.raises(PancsegError, match="non-integer values"):
        map_labels(labels, "nih")


def test_strict_names_the_unexpected_values():
    # A multi-organ map read with the MSD preset: strict catches it and says what it found.
    labels = np.array([0, 1, 2, 5, 7, 7], dtype=np.int16)
    with pytest.raises(PancsegError, match=r"values \[5, 7\] besides the expected \[0, 1, 2\]"):
        map_labels(labels, "msd", strict=True)
    np.testing.assert_array_equal(map_labels(labels, "msd"), [0, 1, 1, 0, 0, 0])


def test_strict_accepts_a_label_with_only_the_expected_values():
    labels = np.array([0, 1, 1, 0], dtype=np.uint16)
    np.testing.assert_array_equal(map_labels(labels, "nih", strict=True), [0, 1, 1, 0])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,2", (1, 2)),
        (" 2, 1 ,1", (1, 2)),
        ("7", (7,)),
        ("MSD", (1, 2)),
        ("totalsegmentator", (7,)),
        ("nonzero", None),
    ],
)
def test_parse_label_values_table(text, expected):
    assert parse_label_values(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "comma-separated integers"),
        ("1,,2", "comma-separated integers"),
        ("1,a", "'a' is not an integer"),
        ("0", "integers >= 1"),
        ("-1", "integers >= 1"),
    ],
)
def test_parse_label_values_errors(text, message):
    with pytest.raises(PancsegError, match=message):
        parse_label_values(text)


@pytest.mark.parametrize("values", [(0,), (1.5,), ("a",), ()])
def test_map_labels_rejects_bad_values(values):
    with pytest.raises(PancsegError, match="label values must be"):
        map_labels(LABELS, values)


def test_presets_are_the_documented_ones():
    assert LABEL_PRESETS == {
        "msd": (1, 2),
        "totalsegmentator": (7,),
        "nih": (1,),
        "nonzero": None,
    }


def test_totalsegmentator_labels_give_the_pancreas(ts_labels_path):
    labels = np.asarray(nib.load(ts_labels_path).dataobj)
    mask = map_labels(labels, "totalsegmentator")
    assert mask.shape == labels.shape and mask.sum() == 644
    with pytest.raises(PancsegError, match="besides the expected \\[0, 7\\]"):
        map_labels(labels, "totalsegmentator", strict=True)


def test_negative_labels_are_refused():
    with pytest.raises(PancsegError, match="negative"):
        map_labels(np.array([[0, -1], [1, 2]]), (1,))


@pytest.mark.parametrize(
    "label, values, ok",
    [
        ([[0, 5], [5, 0]], (1, 2), False),  # another dataset's labels: refused
        ([[0, 7], [5, 0]], (7,), True),  # multi-organ map with the pancreas: fine
        ([[0, 0], [0, 0]], (1, 2), True),  # no foreground at all: an empty mask
    ],
)
def test_require_present(label, values, ok):
    label = np.array(label, np.uint8)
    if ok:
        assert map_labels(label, values, require_present=True).shape == label.shape
    else:
        with pytest.raises(PancsegError, match="none of the pancreas values"):
            map_labels(label, values, require_present=True)
