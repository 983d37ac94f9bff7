"""The label convention used everywhere (EMIDEC's)."""
import numpy as np

BACKGROUND, BLOOD_POOL, MYOCARDIUM, SCAR, MVO = 0, 1, 2, 3, 4
NUM_CLASSES = 5
CLASS_NAMES = ("background", "LV blood pool", "healthy myocardium", "scar", "MVO")


def myocardium_mask(labels: np.ndarray) -> np.ndarray:
    """LV myocardium = healthy myocardium ∪ scar ∪ MVO (2∪3∪4)."""
    return (labels >= MYOCARDIUM) & (labels <= MVO)


def scar_mask(labels: np.ndarray) -> np.ndarray:
    """Scar (infarct) = scar ∪ MVO (3∪4); MVO lies inside the infarct."""
    return (labels == SCAR) | (labels == MVO)


def mvo_mask(labels: np.ndarray) -> np.ndarray:
    return labels == MVO
