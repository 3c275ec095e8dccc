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


# ---------------------------------------------------------------------------------------------
# Unreadable cache files, and folders that cannot hold the cache
# ---------------------------------------------------------------------------------------------

def _run(code, env, cwd):
    """Run ``python -c code``; (stdout, the KernelCacheWarning lines of stderr). Any other
    output on stderr fails the test."""
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, text=True,
                         capture_output=True)
    assert out.returncode == 0, out.stderr
    warned = [line for line in out.stderr.splitlines() if "KernelCacheWarning" in line]
    assert len(warned) == len(out.stderr.splitlines()), out.stderr
    return out.stdout.strip(), warned


def _cache_env(tmp_path):
    env = dict(os.environ, NUMBACONV_DEVICE="cpu", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    return env


def _files(tmp_path, pattern):
    return sorted(glob.glob(str(tmp_path / "cache" / "**" / pattern), recursive=True))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garbage(path):
    with open(path, "wb") as f:
        f.write(os.urandom(4000))


def _empty(path):
    open(path, "wb").close()


@pytest.mark.parametrize("damage", [_truncate, _garbage, _empty], ids=["truncated", "garbage",
                                                                       "empty"])
def test_an_unreadable_cache_file_is_dropped_and_recompiled(tmp_path, damage):
    # Each damaged file used to raise UnpicklingError / EOFError on every call of its kernel,
    # in every later process, naming neither the file nor the cache.
    env = _cache_env(tmp_path)
    assert _run(RELU, env, tmp_path) == ("0.0", [])
    for pattern in ("*.nbi", "*.nbc"):
        files = _files(tmp_path, pattern)
        assert files
        for path in files:
            damage(path)
        result, warned = _run(RELU, env, tmp_path)
        assert result == "0.0"
        assert len(warned) == len(files), warned
        for path in files:
            assert any(path in line and "could not be read" in line for line in warned), warned
        assert _run(RELU, env, tmp_path) == ("0.0", [])  # re-cached: read back without a word


def test_a_cache_file_truncated_while_a_process_runs(tmp_path):
    # The index is read again for each new specialisation: damage between two of them.
    env = _cache_env(tmp_path)
    both = ("import numpy as np, numbaconv.functional as F; "
            "print(F.relu(np.array([-1.0], np.float32))[0], F.relu(np.array([-1.0]))[0])")
    assert _run(both, env, tmp_path) == ("0.0 0.0", [])
    code = f"""
import glob, os
import numpy as np, numbaconv.functional as F
from numbaconv import device
print(F.relu(np.array([-1.0], np.float32))[0])
for path in glob.glob(os.path.join(device.cache_dir(), "*.nb*")):
    with open(path, "r+b") as f:
        f.truncate(5)
print(F.relu(np.array([-1.0]))[0])
"""
    result, warned = _run(code, env, tmp_path)
    assert result.split() == ["0.0", "0.0"]
    assert warned and all("could not be read" in line for line in warned), warned
    assert _run(both, env, tmp_path) == ("0.0 0.0", [])


INFO = RELU + "; import numbaconv; numbaconv.info()"


@pytest.fixture
def read_only_install(tmp_path):
    """A copy of the package whose folders take no cache (``__pycache__`` is a file, as good as
    read-only here, where tests may run as root), and a home whose cache folder is a file.
    Yields (env, tmp folder): TMPDIR is writable unless the test blocks it."""
    src = tmp_path / "src"
    shutil.copytree(os.path.dirname(numbaconv.__file__), src / "numbaconv",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [src / "numbaconv"] + [p for p in (src / "numbaconv").iterdir() if p.is_dir()]:
        (folder / "__pycache__").write_text("")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(src), NUMBACONV_DEVICE="cpu", HOME=str(home),
               TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    for name in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        env.pop(name, None)
    return env, tmp


def _cache_line(stdout):
    return [line for line in stdout.splitlines() if line.startswith("cache ")][0]


def test_a_read_only_install_caches_in_a_private_temporary_folder(read_only_install, tmp_path):
    # Used to fail every kernel, info() included: "cannot cache function ...: no locator".
    env, tmp = read_only_install
    out, warned = _run(INFO, env, tmp_path)
    assert out.splitlines()[0] == "0.0"
    folder = _cache_line(out).split()[1]
    assert folder.startswith(str(tmp / "numbaconv-cache-")), out
    assert glob.glob(os.path.join(folder, "*.nbi"))
    assert len(warned) == 1 and "temporary folder" in warned[0] and folder in warned[0]
    if hasattr(os, "getuid"):
        assert os.stat(os.path.dirname(os.path.dirname(folder))).st_mode & 0o077 == 0


def test_a_temporary_folder_of_someone_else_is_not_used(read_only_install, tmp_path):
    # Anyone can create a folder in /tmp: one that is not private is never trusted, since
    # numba unpickles what it finds there. Nothing else is writable: no cache at all.
    env, tmp = read_only_install
    uid = os.getuid() if hasattr(os, "getuid") else 0
    (tmp / f"numbaconv-cache-{uid}").mkdir(mode=0o777)
    os.chmod(tmp / f"numbaconv-cache-{uid}", 0o777)
    out, warned = _run(INFO, env, tmp_path)
    assert out.splitlines()[0] == "0.0"
    assert _cache_line(out).startswith("cache     none"), out
    assert len(warned) == 1 and "no folder is writable" in warned[0], warned
    assert not os.listdir(tmp / f"numbaconv-cache-{uid}")


def test_an_unusable_numba_cache_dir_is_said(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = dict(os.environ, NUMBACONV_DEVICE="cpu", NUMBA_CACHE_DIR=str(blocked))
    out, warned = _run(INFO, env, tmp_path)
    assert out.splitlines()[0] == "0.0"
    folder = _cache_line(out).split()[1]
    assert len(warned) == 1, warned
    assert f"NUMBA_CACHE_DIR={str(blocked)!r}" in warned[0] and folder in warned[0]


TRAIN = """
import hashlib
import numpy as np
import numbaconv as nc

nn, F = nc.nn, nc.functional
np.random.seed(0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
params = list(model.parameters())
opts = [nc.optim.SGD(params[:4], lr=0.05, momentum=0.9, weight_decay=5e-4),
        nc.optim.Adam(params[4:], lr=1e-2, weight_decay=1e-4)]
rng = np.random.default_rng(0)
for step in range(4):
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    logits = model(x)
    model.backward(F.cross_entropy_backward(1.0, logits, y)[0])
    for opt in opts:
        opt.step()
    model.zero_grad()
digest = hashlib.sha256()
for name, value in model.state_dict().items():
    digest.update(name.encode() + np.ascontiguousarray(value).tobytes())
print(digest.hexdigest())
"""


def test_training_is_the_same_with_a_cold_and_a_warm_cache(tmp_path):
    # The compiling process ran a parallel kernel's body as numba optimised it alone, later
    # processes the copy optimised again inside the kernel, from the cache; with LLVM free to
    # fuse multiply-adds the two rounded differently (the demo's epoch-1 loss: 2.238157 cold,
    # 2.238308 warm). A few training steps through conv, batch norm, pooling, linear, the loss,
    # SGD with momentum and Adam must give the same weights, bit for bit.
    env = _cache_env(tmp_path)
    cold, warned = _run(TRAIN, env, tmp_path)
    assert not warned and _files(tmp_path, "*.nbi")
    assert _run(TRAIN, env, tmp_path) == (cold, [])
