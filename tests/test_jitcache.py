"""The on-disk kernel cache follows the sources: kernels are cached in a folder named by the hash
of their backend's sources and settings (numbaconv._jitcache), so an edit of a helper module that
kernels inline, which numba's own cache does not see, is never answered with old machine code."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

import numbaconv

RELU = ("import numpy as np, numbaconv.functional as F; "
        "print(F.relu(np.array([-1.0, 2.0]))[0])")


@pytest.mark.parametrize("where", ["NUMBA_CACHE_DIR", "in-tree __pycache__"])
def test_an_edited_helper_is_recompiled(tmp_path, where):
    src = tmp_path / "src"
    shutil.copytree(os.path.dirname(numbaconv.__file__), src / "numbaconv",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(src), NUMBACONV_DEVICE="cpu")
    env.pop("NUMBA_CACHE_DIR", None)
    cache = src / "numbaconv" / "cpu" / "__pycache__"
    if where == "NUMBA_CACHE_DIR":
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
        cache = tmp_path / "cache"

    def relu_of_minus_one():
        out = subprocess.run([sys.executable, "-c", RELU], env=env, cwd=tmp_path, text=True,
                             capture_output=True, check=True)
        return out.stdout.strip()

    assert relu_of_minus_one() == "0.0"
    assert relu_of_minus_one() == "0.0"  # loaded from the cache
    folders = glob.glob(str(cache / "**" / "numbaconv-*"), recursive=True)
    assert len(folders) == 1 and glob.glob(os.path.join(folders[0], "*.nbi")), folders
    # _ops.py is inlined into every kernel but is not the kernels' own source file, which is
    # all numba's cache checks: a stale kernel would still answer 0.0.
    ops = src / "numbaconv" / "_ops.py"
    text = ops.read_text()
    edited = text.replace("return zero if v <= zero else v", "return one if v <= zero else v")
    assert edited != text
    ops.write_text(edited)
    assert relu_of_minus_one() == "1.0"
    assert len(glob.glob(str(cache / "**" / "numbaconv-*"), recursive=True)) == 2
