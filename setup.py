from setuptools import setup

setup(cffi_modules=["asyncsandlock/_ffi_build.py:ffibuilder"])
