"""`pancseg evaluate`'s report opened in a real browser: headless Chromium renders the pages.

Two real CTs (TotalSegmentator's 3 mm example, pancreas = label 7, and subject s0009 at
1.5 mm) with predictions made from their labels: ct_3mm's is shifted one voxel to the patient's
left, plus a false-positive ball in the liver on slices without pancreas; s0009's is the
pancreas eroded by one voxel, so it has no false positive. `pancseg evaluate` writes the
report; Chromium (headless, as root with --no-sandbox) screenshots ``index.html`` and dumps the
DOM of every page after its ``load`` event, where the pages' own check has written how many
``<img>`` there are and how many loaded (``naturalWidth > 0``).
"""

import html.parser
import pathlib
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((found for name in BROWSERS if (found := shutil.which(name))), None)

pytestmark = [
    pytest.mark.large,
    pytest.mark.skipif(
        BROWSER is None,
        reason=f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
        "apt-get install chromium",
    ),
]

BLOB_CENTRE = (80, 55, 24)  # (i, j, k) voxel of ct_3mm, inside the liver (label 5)
BLOB_SLICES = range(22, 27)  # k with blob voxels: radius 2 voxels along k
PANCREAS_SLICES = range(2, 20)  # k with label 7 in ct_3mm


def _ball(shape, centre, radius) -> np.ndarray:
    i, j, k = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2 <= radius**2


def _save(path: pathlib.Path, mask: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(path))


@pytest.fixture(scope="module")
def report(tmp_path_factory, shared_data, ts_ct_path, ts_labels_path) -> pathlib.Path:
    root = tmp_path_factory.mktemp("browser")
    for folder in ("pred", "gt", "images"):
        (root / folder).mkdir()

    labels = nib.load(ts_labels_path)
    values = np.asarray(labels.dataobj)
    pancreas = values == 7
    assert np.array_equal(np.flatnonzero(pancreas.any(axis=(0, 1))), PANCREAS_SLICES)
    ball = _ball(values.shape, BLOB_CENTRE, 2)
    assert np.all(values[ball] == 5) and not np.any(pancreas[:, :, BLOB_SLICES])
    # RAS file: i runs to the patient's right, so -1 along i moves the mask to the left.
    _save(root / "pred" / "ct_3mm.nii.gz", np.roll(pancreas, -1, axis=0) | ball, labels.affine)
    _save(root / "gt" / "ct_3mm.nii.gz", pancreas, labels.affine)
    (root / "images" / "ct_3mm.nii.gz").symlink_to(ts_ct_path)

    s0009 = shared_data / "totalsegmentator_s0009"
    truth = nib.load(s0009 / "pancreas.nii.gz")
    mask = np.asarray(truth.dataobj) > 0
    _save(root / "pred" / "s0009.nii.gz", binary_erosion(mask), truth.affine)
    (root / "gt" / "s0009.nii.gz").symlink_to(s0009 / "pancreas.nii.gz")
    (root / "images" / "s0009.nii.gz").symlink_to(s0009 / "ct.nii.gz")

    out = root / "report"
    done = subprocess.run(
        ["pancseg", "evaluate", root / "pred", root / "gt", "-o", out, "--images", root / "images"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "over 2 case(s)" in done.stdout
    return out


def chromium(tmp_path: pathlib.Path, url: str, *args: str) -> str:
    """Runs headless Chromium on ``url`` with its own profile; returns its stdout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    done = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",  # as root (CI) Chromium refuses to start without it
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            # Screenshots wait for every image to be rasterised, not just decoded.
            "--run-all-compositor-stages-before-draw",
            f"--user-data-dir={profile}",
            # Virtual time runs until the page is idle (images decoded, load handlers run).
            "--virtual-time-budget=15000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Page(html.parser.HTMLParser):
    """The attributes of <body>, every <img>, <area> and linked slice of a dumped DOM."""

    def __init__(self, text: str):
        super().__init__()
        self.body: dict[str, str] = {}
        self.images: list[dict[str, str]] = []
        self.areas: list[dict[str, str]] = []
        self.elements: dict[str, dict[str, str]] = {}
        self.false_positive: list[int] = []
        self._in_false_positive = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = {name: value or "" for name, value in attrs}
        if tag == "body":
            self.body = attributes
        elif tag == "img":
            self.images.append(attributes)
        elif tag == "area":
            self.areas.append(attributes)
        if "id" in attributes:
            self.elements[attributes["id"]] = attributes
        if attributes.get("id") == "false-positive-slices":
            self._in_false_positive = 1
        elif self._in_false_positive and tag == "a":
            self.false_positive.append(int(attributes["data-slice"]))

    def handle_endtag(self, tag):
        if tag == "span" and self._in_false_positive:
            self._in_false_positive = 0


def dump(tmp_path: pathlib.Path, path: pathlib.Path, fragment: str = "") -> _Page:
    text = chromium(tmp_path, path.as_uri() + fragment, "--dump-dom")
    assert "</html>" in text
    return _Page(text)


def assert_every_image_loaded(page: _Page, static: pathlib.Path) -> None:
    # The page's load handler ran in the browser and counted every <img> of the file.
    expected = len(re.findall(r"<img\b", static.read_text(encoding="utf-8")))
    assert expected > 0
    assert page.body.get("data-images-total") == str(expected)
    assert page.body.get("data-images-loaded") == str(expected)
    assert "hidden" in page.elements["missing-images"]


def test_index_renders_with_every_image(report, tmp_path):
    shot = tmp_path / "index.png"
    chromium(tmp_path, (report / "index.html").as_uri(), f"--screenshot={shot}",
             "--window-size=1300,2400")  # fmt: skip
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert rgb.shape[:2] == (2400, 1300)
    assert rgb.std() > 30  # not a blank page
    non_white = np.any(rgb < 235, axis=2).mean()
    assert non_white > 0.15
    # The montages were drawn: pixels of both outline colours are on the screen.
    green = (rgb[..., 1] > 180) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)
    red = (rgb[..., 0] > 220) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    assert green.sum() > 100 and red.sum() > 100

    page = dump(tmp_path, report / "index.html")
    assert_every_image_loaded(page, report / "index.html")
    sources = {image["src"] for image in page.images}
    assert sources == {"dsc_boxplot.png", "cases/ct_3mm.png", "cases/s0009.png"}


def test_montages_are_at_least_1000_px_wide(report):
    for case in ("ct_3mm", "s0009"):
        width, height = Image.open(report / "cases" / f"{case}.png").size
        assert width >= 1000 and height > 300


def test_case_page_shows_the_false_positive_slice(report, tmp_path):
    static = report / "cases" / "ct_3mm.html"
    page = dump(tmp_path, static, "#slice-24")
    assert_every_image_loaded(page, static)
    # A montage tile is a false-positive slice of the ball, and links there.
    tiles = {int(area["href"].removeprefix("#slice-")): area["title"] for area in page.areas}
    assert len(tiles) == 12
    false_positive_tiles = {k for k, title in tiles.items() if "false positive" in title}
    assert false_positive_tiles & set(BLOB_SLICES)
    assert all(k in PANCREAS_SLICES for k, title in tiles.items() if "pancreas" in title)
    # The page's list of false-positive slices holds the ball's and the shift's slices.
    assert set(page.false_positive) & set(BLOB_SLICES)
    assert set(page.false_positive) & set(PANCREAS_SLICES)
    # The fragment opened that slice in the scroller, and its image is the one on screen.
    scroller = page.elements["slice-image"]
    assert scroller["data-slice"] == "24" and scroller["src"] == "ct_3mm/slice_0024.png"
    assert "hidden" not in page.elements["scroller"]
    width, _ = Image.open(report / "cases" / "ct_3mm" / "slice_0024.png").size
    assert width >= 600


def test_case_without_false_positives_lists_none(report, tmp_path):
    static = report / "cases" / "s0009.html"
    page = dump(tmp_path, static)
    assert_every_image_loaded(page, static)
    assert page.false_positive == []
    titles = [area["title"] for area in page.areas]
    assert not any("false positive" in title for title in titles)
    assert any("false negative" in title for title in titles)
    # Without a fragment the scroller opens on a slice with the most ground truth.
    areas = np.asarray(nib.load(report.parent / "gt" / "s0009.nii.gz").dataobj).sum(axis=(0, 1))
    assert areas[int(page.elements["slice-image"]["data-slice"])] == areas.max()


def test_a_missing_image_is_reported_on_the_page(report, tmp_path):
    # The check can fail: a report copied without one montage says so in the browser.
    copy = tmp_path / "copy"
    shutil.copytree(report, copy)
    (copy / "cases" / "s0009.png").unlink()
    page = dump(tmp_path, copy / "index.html")
    assert page.body["data-images-total"] == "5"  # the box plot, two thumbnails, two montages
    assert page.body["data-images-loaded"] == "3"  # s0009's thumbnail and montage are missing
    assert "hidden" not in page.elements["missing-images"]
