# setuptools needs setup.py for cffi_modules; everything else is in pyproject.toml
from setuptools import setup

setup(cffi_modules=["uringserve/_native/build.py:ffibuilder"])
