"""The synthetic phantoms and cohort: anatomy in numbers, ambiguous slices, bytes on disk."""

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pancseg_tf.errors import PancsegError
from pancseg_tf.io.cohorts import ambiguous_slices, discover_cohort
from pancseg_tf.synthetic import make_cohort, make_phantom

SMALL = (64, 64, 24)  # cohort tests: fast; phantom tests use the default (192, 192, 64)


@pytest.fixture(scope="module")
def ct_phantoms():
    return [make_phantom(np.random.default_rng(seed)) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def mri_pair():
    """The same MRI phantom with and without its bias field."""
    biased = make_phantom(np.random.default_rng(5), modality="mri")
    flat = make_phantom(np.random.default_rng(5), modality="mri", bias_field=False)
    return biased, flat


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("synth") / "ct", cases=3, seed=7, shape=SMALL)


def files_of(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def inside_and_ring(image, label, k, ring_width=3):
    """Voxels of slice k inside the pancreas, and in a ring ``ring_width`` voxels wide around it."""
    inside = label[:, :, k].astype(bool)
    ring = ndimage.binary_dilation(inside, iterations=ring_width) & ~inside
    return image[:, :, k][inside].astype(np.float64), image[:, :, k][ring].astype(np.float64)


def slice_contrast(image, label, k):
    """Mean inside the pancreas minus the mean of the ring around it, on slice k."""
    inside, ring = inside_and_ring(image, label, k)
    return float(inside.mean() - ring.mean())


def lookalike_share(image, label, k, tolerance):
    """The share of the ring around the pancreas within ``tolerance`` of the pancreas' mean."""
    inside, ring = inside_and_ring(image, label, k)
    return float(np.mean(np.abs(ring - inside.mean()) < tolerance))


def pancreas_slices(label):
    return [int(k) for k in np.flatnonzero(label.sum(axis=(0, 1)))]


PIXEL_MM2 = 0.8 * 0.8  # the phantoms' default in-plane voxel area


def largest_area_mm2(mask):
    """The area of the largest connected component of a 2D mask, in mm^2 at the default size."""
    components, n = ndimage.label(mask)
    return 0.0 if n == 0 else float(np.bincount(components.ravel())[1:].max() * PIXEL_MM2)


def smoothed(image):
    """In-plane smoothing over ~1 mm, so that noise does not split a tissue's region."""
    return ndimage.gaussian_filter(image.astype(np.float32), (1.0, 1.0, 0.0))


# === The cohort on disk ===


def test_same_seed_same_bytes_other_seed_differs(tmp_path, cohort):
    again = make_cohort(tmp_path / "again", cases=3, seed=7, shape=SMALL)
    first = files_of(cohort)
    assert sorted(first) == [
        "ambiguous_slices.json",
        "dataset.json",
        "imagesTr/synth_000.nii.gz",
        "imagesTr/synth_001.nii.gz",
        "imagesTr/synth_002.nii.gz",
        "labelsTr/synth_000.nii.gz",
        "labelsTr/synth_001.nii.gz",
        "labelsTr/synth_002.nii.gz",
    ]
    assert files_of(again) == first
    # case n does not depend on how many cases are made
    one = files_of(make_cohort(tmp_path / "one", cases=1, seed=7, shape=SMALL))
    assert one["imagesTr/synth_000.nii.gz"] == first["imagesTr/synth_000.nii.gz"]
    other = files_of(make_cohort(tmp_path / "other", cases=3, seed=8, shape=SMALL))
    for name in first:
        if name.endswith(".nii.gz"):
            assert other[name] != first[name], name


def test_dataset_json_lists_every_case(cohort):
    dataset = json.loads((cohort / "dataset.json").read_text())
    assert dataset["modality"] == {"0": "CT"}
    assert dataset["labels"] == {"0": "background", "1": "pancreas"}
    assert "synthetic" in dataset["description"].lower()
    assert dataset["numTraining"] == len(dataset["training"]) == 3
    for entry in dataset["training"]:
        assert (cohort / entry["image"]).is_file() and (cohort / entry["label"]).is_file()
    cases = discover_cohort(cohort)
    assert [c.case_id for c in cases] == ["synth_000", "synth_001", "synth_002"]
    assert {c.modality for c in cases} == {"ct"}
    assert sorted(ambiguous_slices(cohort)) == ["synth_000", "synth_001", "synth_002"]


def test_files_read_back_with_their_geometry(cohort):
    spacings, origins = set(), set()
    amb = ambiguous_slices(cohort)
    for n in range(3):
        image_file = cohort / "imagesTr" / f"synth_{n:03d}.nii.gz"
        assert image_file.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
        image = nib.load(image_file)
        label = nib.load(cohort / "labelsTr" / f"synth_{n:03d}.nii.gz")
        assert image.shape == label.shape == SMALL
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, label.affine)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
        sx, sy, sz = (float(z) for z in image.header.get_zooms())
        assert 1.66 <= sx <= 2.14 and sy == pytest.approx(sx) and sz == pytest.approx(2.5)
        spacings.add(round(sx, 4))
        origins.add(tuple(np.round(image.affine[:3, 3], 2)))
        labels = np.asarray(label.dataobj)
        range_k = pancreas_slices(labels)
        assert all(range_k[0] < k < range_k[-1] for k in amb[f"synth_{n:03d}"])
    assert len(spacings) == 3 and len(origins) == 3  # cases vary


def test_output_folder_rules(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PancsegError, match="not empty"):
        make_cohort(tmp_path / "mine", cases=1, shape=SMALL)
    with pytest.raises(PancsegError, match="refusing to overwrite"):
        make_cohort(tmp_path / "mine", cases=1, shape=SMALL, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    out = make_cohort(tmp_path / "synth", cases=2, shape=SMALL)
    with pytest.raises(PancsegError, match="not empty"):
        make_cohort(out, cases=1, shape=SMALL)
    make_cohort(out, cases=1, seed=3, shape=SMALL, overwrite=True)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["synth_000.nii.gz"]
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 1
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cases": 0}, "cases"),
        ({"modality": "pet"}, "modality"),
        ({"seed": -1}, "seed"),
        ({"shape": (16, 64, 24)}, "shape"),
        ({"shape": (64, 64)}, "shape"),
        ({"spacing": (0.8, 0.0, 2.5)}, "spacing"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(PancsegError, match=message):
        make_cohort(tmp_path / "out", **{"shape": SMALL, **kwargs})
    assert not (tmp_path / "out").exists()


# === CT phantom ===


def test_label_is_a_pancreas_sized_smooth_organ(ct_phantoms):
    for image, label, _ in ct_phantoms:
        assert image.shape == label.shape == (192, 192, 64)
        assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
        assert 0.002 < label.mean() < 0.015
        assert ndimage.label(label)[1] == 1  # one piece
        ks = pancreas_slices(label)
        assert ks == list(range(ks[0], ks[-1] + 1))  # no gap along z
        assert 0.15 <= len(ks) / label.shape[2] <= 0.4  # a third of the abdomen's slices
        dice = [
            2
            * np.sum(label[:, :, k] & label[:, :, k + 1])
            / (np.sum(label[:, :, k]) + np.sum(label[:, :, k + 1]))
            for k in ks[:-1]
        ]
        assert np.mean(np.array(dice) > 0.6) >= 0.75, np.round(dice, 2)


def test_ct_intensities(ct_phantoms):
    for image, label, ambiguous in ct_phantoms:
        assert image.dtype == np.int16
        clear = [k for k in pancreas_slices(label) if k not in ambiguous]
        pancreas = image[:, :, clear][label[:, :, clear] > 0]
        assert 85.0 < pancreas.mean() < 130.0
        assert -1005 < np.median(image[:12, :12]) < -995  # air outside the body
        assert image.max() > 600  # bone
        assert np.any((image > -130) & (image < -60))  # fat


def test_ct_phantom_has_a_chest_above_and_a_pelvis_below(ct_phantoms):
    """Negatives a model must learn: a heart in lung above the abdomen, bone and bladder below."""
    for image, label, _ in ct_phantoms:
        ks = pancreas_slices(label)
        assert ks[-1] < 0.75 * label.shape[2] and ks[0] > 0.1 * label.shape[2]
        top, bottom = smoothed(image[:, :, -1:])[..., 0], smoothed(image[:, :, :1])[..., 0]
        body = ndimage.binary_fill_holes(top > -500)
        assert np.mean(top[body] < -700) > 0.25  # lungs (~-850 HU) fill much of the chest
        # the heart's contrast-filled chambers (150-250 HU): a bright region larger than the
        # pancreas' largest cross-section is on some slices
        assert largest_area_mm2((top > 120) & (top < 300)) > 400.0
        # the pelvis: iliac wings (far more bone than the spine alone, as on the pancreas'
        # slices) and the bladder's urine (~10 HU)
        middle = smoothed(image[:, :, ks[len(ks) // 2]][..., None])[..., 0]
        assert np.sum(bottom > 300) > 2 * np.sum(middle > 300)
        assert largest_area_mm2((bottom > -10) & (bottom < 35)) > 250.0


def test_brightness_alone_does_not_segment_the_pancreas(ct_phantoms):
    """Vessels, kidneys, contrast-filled bowel and the heart share or exceed its intensity."""
    for image, label, _ in ct_phantoms:
        image = smoothed(image)
        inside = image[label > 0]
        low, high = np.percentile(inside, [10, 90])
        band = (image >= low) & (image <= high)
        assert 2 * np.sum(band & (label > 0)) / (band.sum() + label.sum()) < 0.45
        brighter = (image > high) & (label == 0)
        assert brighter.sum() > 3 * label.sum()


def test_the_liver_is_as_bright_as_the_pancreas_in_some_ct_phantoms_and_darker_in_others():
    """Contrast phases differ: a late-arterial liver is darker than the pancreas, a portal-venous
    one (NIH Pancreas-CT's) as bright or brighter. A fixed darker liver taught the demo model to
    take a real liver for pancreas."""
    from pancseg_tf.synthetic.anatomy import paint_anatomy
    from pancseg_tf.synthetic.tissues import TISSUE_INDEX, render_intensities

    shape, spacing = (96, 96, 32), (3.8, 3.8, 5.0)
    differences = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        canvas, label, _ = paint_anatomy(rng, shape, spacing)
        axes = (canvas.x, canvas.y, canvas.z)
        image = render_intensities(
            rng, canvas.tissue, axes, spacing, modality="ct", bias_field=True
        ).astype(np.float64)
        liver = ndimage.binary_erosion(canvas.tissue == TISSUE_INDEX["liver"], iterations=2)
        assert liver.sum() > 500
        differences.append(np.median(image[liver]) - np.median(image[label > 0]))
    differences = np.round(differences, 1)
    assert differences.max() > 0.0 and differences.min() < -25.0, differences


def test_ambiguous_slices_are_resolvable_only_from_their_neighbours(ct_phantoms):
    for image, label, ambiguous in ct_phantoms:
        ks = pancreas_slices(label)
        assert 2 <= len(ambiguous) <= 4 and ambiguous == sorted(ambiguous)
        for k in ambiguous:
            assert ks[0] + 1 < k < ks[-1] - 1  # never at the ends
            assert (k - 1 not in ambiguous) or (k + 1 not in ambiguous)  # single or pairs
        clear = [abs(slice_contrast(image, label, k)) for k in ks if k not in ambiguous]
        clear_share = [lookalike_share(image, label, k, 30.0) for k in ks if k not in ambiguous]
        for k in ambiguous:
            # a touching look-alike within 30 HU: the contrast to the surroundings all but gone
            assert abs(slice_contrast(image, label, k)) < min(30.0, 0.3 * np.median(clear))
            assert lookalike_share(image, label, k, 30.0) > max(0.6, 2.5 * np.median(clear_share))
            # the neighbour on at least one side is clear
            assert any(
                abs(slice_contrast(image, label, j)) > 0.5 * np.median(clear)
                for j in (k - 1, k + 1)
                if j not in ambiguous
            )


# === MRI phantom ===


def test_mri_phantom_has_mri_contrast_and_a_bias_field(mri_pair):
    (image, label, ambiguous), (flat, flat_label, flat_ambiguous) = mri_pair
    np.testing.assert_array_equal(label, flat_label)
    assert ambiguous == flat_ambiguous and len(ambiguous) >= 2
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() < 3000.0
    assert np.median(image[:12, :12]) < 50.0  # air: the Rician noise floor, not -1000
    fat_like = flat > 650.0
    assert fat_like.mean() > 0.05  # fat is bright on T1
    assert 400.0 < flat[label > 0].mean() < 650.0
    # the bias field: a smooth multiplicative change, > 15 % across the body
    ratio = np.log(image[fat_like] / flat[fat_like])
    i, j, k = (c.astype(np.float64) / n for c, n in zip(np.nonzero(fat_like), image.shape))
    design = np.stack([np.ones_like(i), i, j, k, i * j, i * i, j * j, k * k], axis=1)
    fit, *_ = np.linalg.lstsq(design, ratio, rcond=None)
    residual = ratio - design @ fit
    assert np.ptp(design @ fit) > np.log(1.15)
    assert residual.std() < 0.05
    # ambiguous slices: most of the ring around the pancreas looks like it (within 10 %); with
    # fat brighter and vessels darker than the pancreas on T1, the ring's mean would tell little
    tolerance = 0.1 * float(image[label > 0].mean())
    # the chest on T1: dark lungs around a heart whose blood pool is bright (gradient-echo inflow)
    top = smoothed(flat[:, :, -1:])[..., 0]
    body = ndimage.binary_fill_holes(top > 200.0)
    assert np.mean(top[body] < 80.0) > 0.25
    assert largest_area_mm2((top > 380.0) & (top < 700.0)) > 400.0
    assert not label[:, :, -1].any()
    ks = pancreas_slices(label)
    clear = [lookalike_share(image, label, k, tolerance) for k in ks if k not in ambiguous]
    for k in ambiguous:
        assert lookalike_share(image, label, k, tolerance) > max(0.4, 4 * np.median(clear))
