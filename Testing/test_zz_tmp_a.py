import os, sys
sys.path[:0] = ["/work/main/ScarNetSlicer"]
import slicer
import SimpleITK as sitk
MODE = os.environ.get("MODE", "")

def test_x(tmp_path):
    if "W" in MODE:
        sitk.ProcessObject_SetGlobalWarningDisplay(False)
    if "r" in MODE:
        img = sitk.ReadImage("/work/main/Resources/Sample/EMIDEC_samplePositive_LGE.nii.gz")[:, :, 3:5]
    if "R" in MODE:
        from ScarNetCore.resources import default_model_path, sample_volume_path
