"""MRML volume <-> SimpleITK image, keeping the exact IJK->RAS geometry.

Slicer stores a volume as voxels plus one IJK->RAS matrix (any orientation, oblique included);
SimpleITK/ITK use spacing, origin and a direction matrix in LPS. RAS->LPS flips x and y, so
origin_LPS = F @ origin_RAS and direction_LPS = F @ direction_RAS with F = diag(-1, -1, 1).
Voxel order is the same in both (numpy [k, j, i]), so no axis is ever permuted or flipped -
the usual cause of "flipped masks".
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk
from vtkmodules.util import numpy_support

import slicer
from ScarNetCore.errors import InputError, ScarNetError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
GEOMETRY_TOLERANCE = 1e-4  # mm / direction cosine; well below any voxel size


class ScarNetSceneError(ScarNetError):
    """The scene is not in a state ScarNet may change (e.g. the output was edited by the user)."""


def _matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijkToRasArray(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _matrixToArray(matrix)


def _extentAwareIjkToRas(volumeNode) -> np.ndarray:
    """IJK->RAS for voxel (0,0,0) of the array, also when the image extent does not start at 0."""
    ijkToRas = ijkToRasArray(volumeNode)
    extent = volumeNode.GetImageData().GetExtent()
    shift = np.eye(4)
    shift[:3, 3] = (extent[0], extent[2], extent[4])
    return ijkToRas @ shift


def validateVolumeNode(volumeNode, role: str = "Input volume") -> None:
    """Reject anything that is not one plain 3-D greyscale volume, saying what to do instead."""
    if volumeNode is None:
        raise InputError(f"{role}: none selected. Load an LGE image (DICOM or file) and select it.")
    name = volumeNode.GetName() or volumeNode.GetID()
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{role} '{name}' is a labelmap (a segmentation result), not an LGE image. "
                         "Select the greyscale LGE volume.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{role} '{name}' is a {volumeNode.GetClassName()} (vector/RGB/tensor data), "
                         "not a greyscale LGE volume.")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0 or imageData.GetPointData().GetScalars() is None:
        raise InputError(f"{role} '{name}' is empty (no voxels). Load the image again.")
    components = imageData.GetNumberOfScalarComponents()
    if components != 1:
        raise InputError(f"{role} '{name}' has {components} components per voxel (RGB/vector or a 4-D "
                         "multi-volume). Select a single-channel 3-D LGE volume.")
    scene = volumeNode.GetScene()
    if scene is not None:
        browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
        for i in range(browsers.GetNumberOfItems()):
            if browsers.GetItemAsObject(i).IsProxyNodeID(volumeNode.GetID()):
                raise InputError(f"{role} '{name}' is the current frame of a 4-D sequence. ScarNet segments one "
                                 "3-D LGE stack: load the LGE series alone, or clone this frame "
                                 "(Data module, right-click > Clone) and select the clone.")


def sitkImageFromVolumeNode(volumeNode) -> sitk.Image:
    """Copy a scalar volume into a SimpleITK image with identical voxels and physical geometry (LPS)."""
    validateVolumeNode(volumeNode)
    imageData = volumeNode.GetImageData()
    nx, ny, nz = imageData.GetDimensions()
    voxels = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(nz, ny, nx)
    image = sitk.GetImageFromArray(np.array(voxels, copy=True))  # own the memory, not VTK's
    ijkToRas = _extentAwareIjkToRas(volumeNode)
    spacing = np.linalg.norm(ijkToRas[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"Input volume '{volumeNode.GetName()}' has a zero voxel spacing; its geometry is broken.")
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in RAS_TO_LPS @ ijkToRas[:3, 3]])
    image.SetDirection([float(v) for v in (RAS_TO_LPS @ (ijkToRas[:3, :3] / spacing)).ravel()])
    return image


def ijkToRasFromSitk(image: sitk.Image) -> np.ndarray:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    ijkToRas[:3, 3] = RAS_TO_LPS @ np.array(image.GetOrigin())
    return ijkToRas


def volumeNodeGeometryMatches(volumeNode, image: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """True if `image` lies on exactly the voxel grid of `volumeNode`."""
    imageData = volumeNode.GetImageData()
    if imageData is None or tuple(imageData.GetDimensions()) != tuple(image.GetSize()):
        return False
    return bool(np.allclose(_extentAwareIjkToRas(volumeNode), ijkToRasFromSitk(image), atol=tolerance))


def orientedImageGeometryFromVolumeNode(volumeNode, allocate: bool = False) -> "slicer.vtkOrientedImageData":
    """A vtkOrientedImageData on the volume's voxel grid (optionally allocated as uint8 zeros)."""
    imageData = volumeNode.GetImageData()
    oriented = slicer.vtkOrientedImageData()
    oriented.SetExtent(imageData.GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    oriented.SetImageToWorldMatrix(matrix)
    if allocate:
        oriented.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        oriented.GetPointData().GetScalars().Fill(0)
    return oriented


def orientedImageFromArray(array: np.ndarray, volumeNode) -> "slicer.vtkOrientedImageData":
    """uint8 array [k, j, i] on the volume's grid -> vtkOrientedImageData."""
    oriented = orientedImageGeometryFromVolumeNode(volumeNode, allocate=True)
    target = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())
    target[:] = np.ascontiguousarray(array, dtype=np.uint8).ravel()
    oriented.Modified()
    return oriented


def arrayFromOrientedImage(oriented) -> np.ndarray:
    nx, ny, nz = oriented.GetDimensions()
    return numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(nz, ny, nx).copy()


def rasToLps(point) -> tuple[float, float, float]:
    x, y, z = point
    return (-float(x), -float(y), float(z))


def addVolumeNodeFromSitk(scene, image: sitk.Image, name: str, className: str = "vtkMRMLScalarVolumeNode"):
    """Headless loader: a SimpleITK image -> a new volume node with identical geometry."""
    array = sitk.GetArrayFromImage(image)
    nz, ny, nx = array.shape[:3]
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(nx, ny, nz)
    components = image.GetNumberOfComponentsPerPixel()
    vtkArray = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).reshape(-1, components), deep=True)
    imageData.GetPointData().SetScalars(vtkArray)
    node = scene.AddNewNodeByClass(className, name)
    node.SetAndObserveImageData(imageData)
    node.SetIJKToRASMatrix(_arrayToMatrix(ijkToRasFromSitk(image)))
    return node
