"""Algorithm choice: heuristic by default, measured and remembered with NUMBACONV_AUTOTUNE=1."""

import json

import numba
import numpy as np
import pytest

import numbaconv as nc
import reference as R
from numbaconv.cpu import autotune


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private on-disk table in tmp_path, autotuning on."""
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NUMBACONV_AUTOTUNE", "1")
    autotune.STORE.forget()
    yield tmp_path / "numbaconv-autotune.json"
    autotune.STORE.forget()


def _candidates(calls):
    import time

    def slow():
        calls.append("slow")
        time.sleep(0.002)

    def fast():
        calls.append("fast")

    return {"slow": slow, "fast": fast}


def test_off_uses_the_heuristic(monkeypatch):
    monkeypatch.delenv("NUMBACONV_AUTOTUNE", raising=False)
    calls = []
    assert autotune.choose(("k",), _candidates(calls), "slow") == "slow"
    assert calls == []


def test_measures_once_and_remembers_on_disk(store):
    calls = []
    assert autotune.choose(("k", 1), _candidates(calls), "slow") == "fast"
    assert calls.count("slow") >= 2  # warm-up plus timed runs
    data = json.loads(store.read_text())
    assert list(data["choices"].values()) == ["fast"]
    autotune.STORE.forget()  # as a new process would: read back from the file
    calls.clear()
    assert autotune.choose(("k", 1), _candidates(calls), "slow") == "fast"
    assert calls == []


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]),
                                     json.dumps({"stamp": {"format": -1}, "choices": {}})])
def test_corrupt_or_stale_file_is_rebuilt(store, content):
    store.write_text(content)
    calls = []
    assert autotune.choose(("k", 2), _candidates(calls), "slow") == "fast"
    assert calls, "a corrupt or stale table must not be trusted"
    assert json.loads(store.read_text())["stamp"] == autotune._stamp()


def test_unknown_name_in_the_file_is_ignored(store):
    calls = []
    autotune.choose(("k", 3), _candidates(calls), "slow")
    data = json.loads(store.read_text())
    data["choices"] = {k: "no-such-algorithm" for k in data["choices"]}
    store.write_text(json.dumps(data))
    autotune.STORE.forget()
    calls.clear()
    assert autotune.choose(("k", 3), _candidates(calls), "slow") == "fast"
    assert calls


def test_bad_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("NUMBACONV_AUTOTUNE", "yes")
    with pytest.raises(ValueError, match="NUMBACONV_AUTOTUNE='yes' is not valid"):
        autotune.enabled()


def test_autotuned_conv_is_correct(store, rng):
    # Depthwise has two applicable algorithms; whichever wins, the result must be right.
    x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    for _ in range(2):
        out = nc.functional.conv2d(x, w, padding=1, groups=6)
        np.testing.assert_allclose(out, R.conv2d(x, w, padding=1, groups=6), rtol=1e-5,
                                   atol=1e-5)
    assert len(json.loads(store.read_text())["choices"]) == 1
