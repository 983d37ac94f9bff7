"""The label convention used everywhere (EMIDEC's)."""
import numpy as np

BACKGROUND, BLOOD_POOL, MYOCARDIUM, SCAR, MVO = 0, 1, 2, 3, 4
NUM_CLASSES = 5
CLASS_NAMES = ("background", "LV blood pool", "healthy myocardium", "scar", "MVO")

# What each label is, in DICOM terms: (segment name, category, type), codes as (scheme, value, meaning).
# The Slicer segments and the DICOM SEG both read this table, so they carry the same codes. SNOMED CT
# where one exists; MVO has none, so it gets a private scheme ("99" prefix, as DICOM PS3.16 prescribes
# for private schemes), declared for Slicer in ScarNetSlicer/Resources/ScarNet.term.json.
LEFT_VENTRICLE = ("SCT", "87878005", "Left ventricle")  # anatomic region of every segment
TERMINOLOGY = {
    BLOOD_POOL: ("LV blood pool", ("SCT", "85756007", "Tissue"), ("SCT", "87612001", "Blood")),
    MYOCARDIUM: ("Healthy myocardium", ("SCT", "123037004", "Anatomical Structure"), ("SCT", "74281007", "Myocardium")),
    SCAR: ("Scar", ("SCT", "85756007", "Tissue"), ("SCT", "12402003", "Scar tissue")),
    MVO: ("MVO", ("SCT", "49755003", "Morphologically Altered Structure"),
          ("99SCARNET", "MVO", "Microvascular obstruction")),
}


def myocardium_mask(labels: np.ndarray) -> np.ndarray:
    """LV myocardium = healthy myocardium ∪ scar ∪ MVO (2∪3∪4)."""
    return (labels >= MYOCARDIUM) & (labels <= MVO)


def scar_mask(labels: np.ndarray) -> np.ndarray:
    """Scar (infarct) = scar ∪ MVO (3∪4); MVO lies inside the infarct."""
    return (labels == SCAR) | (labels == MVO)


def mvo_mask(labels: np.ndarray) -> np.ndarray:
    return labels == MVO
