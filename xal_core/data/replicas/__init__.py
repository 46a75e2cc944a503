"""Replica generators: tiny copies of the real datasets' layouts, written with the real libraries.

The real BraTS, VinDr-CXR and SIIM-COVID cannot be downloaded here (and are large), so every
adapter is tested on replicas that follow the published layouts file for file: the same folder
names, CSV columns and quirks, NIfTI written by nibabel and DICOM written by pydicom. Pixel content
is synthetic but placed so tests can check geometry (a bright patch under each box or tumour).
``xal fixtures {brats,vindr,siim} --out DIR --n N`` writes them.
"""
