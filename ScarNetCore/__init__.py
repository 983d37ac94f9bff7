"""ScarNet engine: LGE scar segmentation model, inference, quantification and reports.

Importable without Slicer or Qt.
"""
__version__ = "0.2.0"
