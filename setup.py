"""Build of the cffi extension; metadata lives in pyproject.toml.

The extension's portable sources are compiled by setuptools as usual. Files
for one ISA (``*__avx2.c``, ``*__neondot.c``) need their own compiler flags,
which setuptools cannot set per file: ``build_ext`` compiles them first and
links the objects in.
"""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent / "native"))
import build_ffi


class BuildExtWithIsaFlags(build_ext):
    def build_extension(self, ext):
        isa_sources = [(path, flags) for path, flags in build_ffi.read_sources() if flags]
        objects = []
        for path, flags in isa_sources:
            objects += self.compiler.compile(
                [path],
                output_dir=self.build_temp,
                include_dirs=ext.include_dirs,
                macros=ext.define_macros,
                extra_postargs=build_ffi.COMMON_FLAGS + ["-fPIC"] + flags,
            )
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithIsaFlags},
)
