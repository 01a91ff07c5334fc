"""Seeded synthetic abdominal CT- and MRI-like phantoms with a pancreas, and an MSD-layout cohort.

Each phantom is a small abdomen: body outline with subcutaneous fat and a muscle wall, liver,
spleen, kidneys, spine, aorta, inferior vena cava, portal and splenic veins, stomach (fluid with a
gas cap), gallbladder, a duodenal C-loop around the pancreatic head, bowel loops, and a pancreas
with head, body and tail along a smooth curved centre line whose outline changes smoothly from
slice to slice. Intensities are Hounsfield units of a portal-venous-phase CT, or arbitrary units of
a T1-weighted-like MRI with a smooth multiplicative bias field and Rician noise.

The phantoms are hard in the way the paper addresses: on a few recorded slices the pancreas cannot
be told from its surroundings on that slice alone. There a bowel-like look-alike with the pancreas'
own intensity fills the fat around it and the pancreas itself takes the look-alike's intensity, so
the contrast between the pancreas and a ring around it drops to about zero; the slices above and
below stay clear, so the outline is recoverable from the neighbouring slices (what the paper's
bidirectional ConvLSTM learns to do) but not from the slice alone.

Modules: ``canvas`` (the label map and the shapes painted into it), ``tissues`` (the tissue
classes, their CT and MRI intensities, rendering), ``anatomy`` (painting one abdomen and its
ambiguous slices), ``phantom`` (`make_phantom`), ``cohort`` (`make_cohort`).

NumPy and SciPy only: no TensorFlow.
"""

from pancseg_tf.synthetic.cohort import GENERATOR, make_cohort
from pancseg_tf.synthetic.phantom import DEFAULT_SHAPE, DEFAULT_SPACING, make_phantom

__all__ = ["DEFAULT_SHAPE", "DEFAULT_SPACING", "GENERATOR", "make_cohort", "make_phantom"]
