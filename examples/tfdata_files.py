"""Bring-your-own data that streams from files: a tf.data pipeline over TFRecord shards.

KTC_DATASET=module:function may return a dict of keras.Model.fit keyword arguments instead of
arrays; here `x` and `validation_data` are tf.data pipelines that read scikit-learn's digits from
TFRecord files, so nothing but a shuffle buffer and a few batches is ever in memory. Run it with
the kit unchanged:
    KTC_CODE_DIR=./examples KTC_DATASET=tfdata_files:load_data KTC_MODEL=tfdata_files:build_model \\
        docker compose up --build

The first process to call `load_data` writes the shards into $KTC_DATA_DIR/digits-tfrecord (in a
folder of its own, renamed into place: chief and workers start together and may race; the loser
drops its copy; a process that may not write there waits for them). Then every process streams them: the chief reads one validation batch (its dry
run, to learn the metric names), the workers train. The training pipeline is batched (no
`batch_size` passed) and repeats, so `steps_per_epoch` says where an epoch ends.
"""

import json
import math
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers

FOLDER = "digits-tfrecord"
TRAIN_SHARDS = 4
BATCH = 32
WAIT_SECONDS = 300  # for the shards another process writes
FEATURES = {"pixels": tf.io.FixedLenFeature([64], tf.float32), "label": tf.io.FixedLenFeature([], tf.int64)}


def _write_shard(path, x, y):
    with tf.io.TFRecordWriter(path) as writer:
        for pixels, label in zip(x, y):
            feature = {"pixels": tf.train.Feature(float_list=tf.train.FloatList(value=pixels)),
                       "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def write_shards(folder):
    """scikit-learn's digits (pixels scaled to [0, 1]) as TRAIN_SHARDS training shards and one
    validation shard (the last 20%), plus counts.json; the folder appears complete or not at all."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype(np.float32), y[order]
    cut = int(len(x) * 0.8)
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".digits-", dir=parent)
    for shard in range(TRAIN_SHARDS):
        rows = slice(shard, cut, TRAIN_SHARDS)
        _write_shard(os.path.join(staging, f"train-{shard}.tfrecord"), x[rows], y[rows])
    _write_shard(os.path.join(staging, "val-0.tfrecord"), x[cut:], y[cut:])
    with open(os.path.join(staging, "counts.json"), "w") as f:
        json.dump({"train": cut, "val": len(x) - cut}, f)
    try:
        os.rename(staging, folder)
    except OSError:  # another process renamed its copy first: the same files
        shutil.rmtree(staging)


def shards(folder, wait=WAIT_SECONDS):
    """`folder`, written here if it is missing; where this process may not write there (Compose
    mounts the data volume read-only in workers), waited for up to `wait` seconds while the
    chief writes it."""
    deadline = time.monotonic() + wait
    while not os.path.isdir(folder):
        try:
            write_shards(folder)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    return folder


def _parse(record):
    example = tf.io.parse_single_example(record, FEATURES)
    return tf.reshape(example["pixels"], (8, 8, 1)), example["label"]


def _records(folder, split, shuffle):
    files = tf.data.Dataset.list_files(os.path.join(folder, f"{split}-*.tfrecord"), shuffle=shuffle)
    return files.interleave(tf.data.TFRecordDataset, cycle_length=TRAIN_SHARDS, num_parallel_calls=tf.data.AUTOTUNE)


def load_data():
    """KTC_DATASET: a dict of keras.Model.fit keyword arguments, streamed from the shards."""
    folder = shards(os.path.join(os.environ.get("KTC_DATA_DIR") or tempfile.gettempdir(), FOLDER))
    with open(os.path.join(folder, "counts.json")) as f:
        counts = json.load(f)
    train = (_records(folder, "train", shuffle=True).shuffle(512).map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
             .batch(BATCH).repeat().prefetch(tf.data.AUTOTUNE))
    val = (_records(folder, "val", shuffle=False).map(_parse).batch(BATCH)
           .apply(tf.data.experimental.assert_cardinality(math.ceil(counts["val"] / BATCH))).prefetch(tf.data.AUTOTUNE))
    return {"x": train, "validation_data": val, "steps_per_epoch": math.ceil(counts["train"] / BATCH),
            "shuffle": False}  # the pipeline shuffles; fit's own shuffle would only warn that it cannot


def build_model(hp):
    """A small MLP on the 8x8 digits (KTC_MODEL=tfdata_files:build_model)."""
    inputs = keras.Input(shape=(8, 8, 1))
    x = layers.Flatten()(inputs)
    x = layers.Dense(hp.Int("units", 32, 128, step=32), activation="relu")(x)
    x = layers.Dropout(hp.Float("dropout", 0.0, 0.4, step=0.2))(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
