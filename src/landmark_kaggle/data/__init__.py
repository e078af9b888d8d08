"""The data layer: GLDv2 folders, label maps, the TFRecord schema and the tf.data pipeline.

- ``gld``: a GLDv2 folder as a typed index (``load_train_index``) and its label map.
- ``records``: the one TFRecord schema, shared by the shard writer and the reader.
- ``pipeline``: shards or image folders → decoded, augmented, batched images (``build_dataset``).
- ``embstore``: the float16 embeddings store written in chunks (``StoreWriter``, ``open_store``).
- ``sample``, ``subset``, ``stats``: the embedded sample dataset, a cut of a real download, class sizes.

Nothing here imports a model, training or inference code.
"""
