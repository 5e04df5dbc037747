"""Packaging glue that pyproject.toml cannot express.

The CUDA C++ sources live in the top-level ``kernels/`` folder, where kernel
authors expect them, but they ship inside the wheel as the package data
``liam_gpu/kernels`` so that an installed copy finds them from any working
directory (see ``liam_gpu.launch.family.kernel_dir``).  The benchmark suite in
``bench/`` ships the same way, as ``liam_gpu/bench``, so that ``liam-gpu bench``
runs from an installed copy (see ``liam_gpu.benchmarks.find_bench_dir``).
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["liam_gpu", "liam_gpu.*"]) + ["liam_gpu.kernels", "liam_gpu.bench"],
    package_dir={"liam_gpu.kernels": "kernels", "liam_gpu.bench": "bench"},
    package_data={
        "liam_gpu.kernels": ["*.cu", "*.cuh"],
        "liam_gpu.bench": ["*.py"],  # conftest.py and bench_*.py; not results/ or the device scripts
        "liam_gpu.emulator": ["*.h"],
    },
    include_package_data=False,
)
