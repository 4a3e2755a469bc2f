"""What the installed distribution carries (licence, type marker), and the build's
messages when the C compiler or OpenMP is missing."""

import os
import pathlib
import shutil
import subprocess
import sys
from importlib import metadata

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _installed_files():
    return {str(f).replace(os.sep, "/"): f for f in metadata.distribution("minitrain").files}


def test_installed_distribution_carries_its_license():
    dist = metadata.distribution("minitrain")
    assert dist.metadata["License-Expression"] == "BSD-3-Clause"
    assert dist.metadata.get_all("License-File") == ["LICENSE"]
    license_file = next(f for name, f in _installed_files().items()
                        if name.endswith(".dist-info/licenses/LICENSE"))
    text = license_file.read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2026, the minitrain developers" in text


def test_installed_package_is_marked_typed():
    files = _installed_files()
    assert "minitrain/py.typed" in files
    assert files["minitrain/py.typed"].locate().is_file()


def _cmake():
    exe = shutil.which("cmake")
    if exe is None or not (ROOT / "CMakeLists.txt").is_file():
        pytest.skip("needs cmake and the source tree")
    return exe


def _configure(tmp_path, *args, env=None):
    result = subprocess.run(
        [_cmake(), "-S", str(ROOT), "-B", str(tmp_path / "build"),
         f"-DPython_EXECUTABLE={sys.executable}", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_build_without_a_c_compiler_says_what_to_install(tmp_path):
    code, output = _configure(tmp_path, env={"CC": str(tmp_path / "no-such-cc")})
    assert code != 0
    assert "minitrain: no C compiler found" in output
    assert "apt install gcc libgomp1" in output
    assert "brew install libomp" in output


def test_build_without_openmp_says_what_to_install(tmp_path):
    code, output = _configure(tmp_path, "-DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=ON")
    assert code != 0
    assert "has no usable OpenMP" in output
    assert "apt install libgomp1" in output
    assert "apt install libomp-dev" in output
    assert "brew install libomp" in output
