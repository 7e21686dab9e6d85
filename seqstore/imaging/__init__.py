"""Images, knowing nothing of stores or loaders: a leaf the rest of seqstore builds on.

- :mod:`~seqstore.imaging.opencv`: OpenCV, imported with its logging quietened.
- :mod:`~seqstore.imaging.header`: what an encoded image is, read from its header.
- :mod:`~seqstore.imaging.decode`: encoded bytes to RGB ``uint8`` arrays.
- :mod:`~seqstore.imaging.imagenet`: ImageNet's colour statistics.

Nothing is imported here, so that reading a header or a constant never loads OpenCV.
"""
