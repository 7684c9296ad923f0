import numpy as np
import pytest

from edgespec.runtime.kv import KVCache, KVOverflowError


def _kv(s, fill):
    return [np.full((1, 2, s, 4), fill, np.float32)]


def test_append_rewind_compact():
    kv = KVCache(1, 2, 4, max_len=8)
    kv.append(_kv(3, 1.0), _kv(3, -1.0))
    kv.append([np.arange(3 * 8, dtype=np.float32).reshape(1, 2, 3, 4)], _kv(3, 2.0))
    assert kv.length == 6
    kv.compact(3, np.array([0, 2]))  # keep appended rows 0 and 2
    assert kv.length == 5
    np.testing.assert_array_equal(kv.keys[0][0, :, 4], np.arange(24).reshape(2, 3, 4)[:, 2])
    kv.rewind(2)
    assert kv.length == 3 and kv.free == 5
    with pytest.raises(KVOverflowError, match="larger --max-len"):
        kv.append(_kv(6, 0.0), _kv(6, 0.0))
    with pytest.raises(ValueError):
        kv.rewind(4)
