"""ScarNet engine: LGE scar segmentation model, inference, quantification and reports.

Importable without Slicer or Qt.
"""
__version__ = "0.1.0"
