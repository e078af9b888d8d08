"""Keras 3's weight files, saved and loaded without the throwaway layers a cache-key typo costs.

To know which attributes of a layer, model or optimizer to skip while walking
it, ``keras.src.saving.saving_lib.get_attr_skipset`` builds a fresh reference
object of that kind and lists its attributes. It means to do so once: it stores
the set as ``saving_attr_skipset_<kind>`` but looks for
``saving_attr_skiplist_<kind>``, a name left from when the list became a set
(Keras 3.15.1, the version setup.py pins). So every save and every load builds
one reference ``Layer`` per object it walks: 282 for EfficientNetV2-B0 with its
AdamW state, about half of each one-second checkpoint on 2 cores
(benchmarks/checkpoint.py).

The set depends only on the kind's name, so one per kind and process is what
Keras intended; ``mend_attr_skipset_cache`` keeps it so, and does nothing on a
Keras that finds its own cache (or lacks the function). The model package calls
it when it is first imported, before any of its modules can save or load.
"""

from __future__ import annotations

import functools

_MARK = "_landmark_kaggle_cached"


def mend_attr_skipset_cache() -> bool:
    """Remember Keras's attribute skip-sets per kind; True when the mend is in place."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib
    except ImportError:
        return False
    original = getattr(saving_lib, "get_attr_skipset", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True
    # Loss is the cheapest kind to build; a Keras whose cache works finds the set it just stored.
    original("Loss")
    if global_state.get_global_attribute("saving_attr_skiplist_Loss", None) is not None:
        return False
    cached = functools.cache(original)
    setattr(cached, _MARK, True)
    saving_lib.get_attr_skipset = cached
    return True
