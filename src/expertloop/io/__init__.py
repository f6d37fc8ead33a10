"""Readers and writers (NIfTI, TIFF/OME-TIFF, PNG/JPEG); no torch, no Qt."""

from expertloop.io.readers import ImageData, ImageReadError, read_image
from expertloop.io.writers import write_nifti, write_tiff

__all__ = ["ImageData", "ImageReadError", "read_image", "write_nifti", "write_tiff"]
