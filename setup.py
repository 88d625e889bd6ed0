"""Builds the compiled core; all metadata lives in pyproject.toml."""

import os
import sys

from setuptools import setup

NO_EXTENSIONS = bool(os.environ.get("ORDEREDTASK_NO_EXTENSIONS")) or (
    sys.implementation.name != "cpython"
)
DEBUG_BUILD = bool(os.environ.get("ORDEREDTASK_DEBUG_BUILD"))
SANITIZE = bool(os.environ.get("ORDEREDTASK_SANITIZE"))

if NO_EXTENSIONS:
    print("*********************\n* Pure Python build *\n*********************")
    ext_modules = []
else:
    from Cython.Build import cythonize
    from setuptools import Extension

    compile_args = ["-std=c++17"]
    link_args = []
    if DEBUG_BUILD:
        compile_args += ["-O0", "-g3", "-UNDEBUG"]
    else:
        compile_args += ["-O3"]
    if SANITIZE:
        flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        compile_args += flags + ["-g"]
        link_args += flags
    ext_modules = cythonize(
        [
            Extension(
                "orderedtask._core._core_c",
                ["orderedtask/_core/_core_c.pyx"],
                include_dirs=["orderedtask/_core"],
                depends=["orderedtask/_core/_engine.h", "orderedtask/_core/_engine.pxi",
                         "orderedtask/_core/_reorder.pxi", "orderedtask/_core/_runner.pxi"],
                language="c++",
                extra_compile_args=compile_args,
                extra_link_args=link_args,
            )
        ],
        compiler_directives={"language_level": "3", "freethreading_compatible": True},
    )

setup(ext_modules=ext_modules)
