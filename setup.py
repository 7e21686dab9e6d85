"""The optional C extension; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "seqstore.imaging.libjpeg_window",
            ["seqstore/imaging/libjpeg_window.c"],
            libraries=["jpeg"],
            # Where libjpeg's headers are missing the build goes on without it, and
            # seqstore decodes whole JPEGs instead of the crop window (seqstore.imaging.decode).
            optional=True,
        )
    ]
)
