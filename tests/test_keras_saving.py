"""Weight files saved once the model code is imported: no throwaway layers, the same arrays as Keras as shipped."""

import keras
import numpy as np
from helpers import weight_file_arrays
from keras.src.backend.common import global_state
from keras.src.layers.layer import Layer
from keras.src.saving import saving_lib

from landmark_kaggle.model.keras_saving import mend_attr_skipset_cache


def _model() -> keras.Model:
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="mse")
    model.fit(np.ones((4, 8)), np.zeros((4, 4)), verbose=0)  # optimizer state to save as well
    return model


def _layers_built(monkeypatch, fn) -> int:
    """How many Layer objects ``fn`` constructs."""
    built = []
    init = Layer.__init__

    def counting(self, *args, **kwargs):
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(Layer, "__init__", counting)
    fn()
    monkeypatch.setattr(Layer, "__init__", init)
    return len(built)


def test_saving_and_loading_build_no_layers_and_write_what_keras_writes(tmp_path, monkeypatch):
    model = _model()
    mended = saving_lib.get_attr_skipset
    assert mend_attr_skipset_cache() and mended is saving_lib.get_attr_skipset
    model.save_weights(tmp_path / "first.weights.h5")  # every kind's set is known from here on
    assert _layers_built(monkeypatch, lambda: model.save_weights(tmp_path / "mended.weights.h5")) == 0
    assert _layers_built(monkeypatch, lambda: model.load_weights(tmp_path / "mended.weights.h5")) == 0
    # Keras as shipped builds one reference layer per object it walks, on every save.
    monkeypatch.setattr(saving_lib, "get_attr_skipset", mended.__wrapped__)
    model.save_weights(tmp_path / "warm.weights.h5")
    assert _layers_built(monkeypatch, lambda: model.save_weights(tmp_path / "shipped.weights.h5")) >= 5
    mine, keras_own = (weight_file_arrays(tmp_path / f"{way}.weights.h5") for way in ("mended", "shipped"))
    assert len(mine) > 10 and mine.keys() == keras_own.keys()
    for name in mine:
        np.testing.assert_array_equal(mine[name], keras_own[name], err_msg=name)


def test_a_keras_whose_cache_works_is_left_as_it_is(monkeypatch):
    build = saving_lib.get_attr_skipset.__wrapped__

    def fixed(obj_type):  # Keras's function with the key it stores and the key it reads the same
        found = global_state.get_global_attribute(f"saving_attr_skiplist_{obj_type}", None)
        if found is None:
            found = build(obj_type)
            global_state.set_global_attribute(f"saving_attr_skiplist_{obj_type}", found)
        return found

    monkeypatch.setattr(saving_lib, "get_attr_skipset", fixed)
    assert not mend_attr_skipset_cache()
    assert saving_lib.get_attr_skipset is fixed


def test_a_keras_without_the_function_is_left_as_it_is(monkeypatch):
    monkeypatch.delattr(saving_lib, "get_attr_skipset")
    assert not mend_attr_skipset_cache()
    assert not hasattr(saving_lib, "get_attr_skipset")
