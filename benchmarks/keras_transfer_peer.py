"""The Keras peer of benchmarks/transfer_speed.py: Keras's transfer-learning guide at 224x224, as img/s.

Runs with the peer venv's Python (TensorFlow 2.x, Keras 3), not cnnlab's:
``~/.cache/keras-peer/bin/python benchmarks/keras_transfer_peer.py --model MobileNetV2 --mode frozen``.

The model is the guide's (https://keras.io/guides/transfer_learning/): ``keras.applications.<Model>``
(``include_top=False, pooling="avg"``) → Dropout(0.2) → Dense(classes); ``frozen`` sets
``base.trainable = False`` and calls the base with ``training=False`` (BatchNorm in inference mode), ``full``
trains everything. ``weights=None`` (random initialisation): this machine has no internet, and the weights do
not change the time a step takes. Data: random uint8 images, cast and scaled by 1/255 in the model, as
``model.fit`` on an in-memory array; Adam, batch 32, ``jit_compile`` left at Keras's default.

Prints one JSON line: {"model", "mode", "batch", "steps", "img_s", "step_s": [...]}; the first ``--warmup``
steps (graph tracing) are not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("ResNet50", "MobileNetV2"), required=True)
    ap.add_argument("--mode", choices=("frozen", "full"), required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="steps before timing (tracing, first allocations)")
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()

    import keras  # the peer venv's; imported here so that --help is instant

    keras.utils.set_random_seed(0)
    base = getattr(keras.applications, args.model)(include_top=False, weights=None, input_shape=(224, 224, 3),
                                                   pooling="avg")
    inputs = keras.Input((224, 224, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    if args.mode == "frozen":
        base.trainable = False
        x = base(x, training=False)
    else:
        x = base(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(args.classes)(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    n = args.batch * (args.warmup + args.steps)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    labels = rng.integers(0, args.classes, n)

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_begin(self, batch, logs=None) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.times.append(time.perf_counter() - self.t0)

    timer = Timer()
    model.fit(images, labels, batch_size=args.batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    steps = timer.times[args.warmup:]
    print(json.dumps({"model": args.model, "mode": args.mode, "batch": args.batch, "steps": len(steps),
                      "img_s": args.batch / statistics.median(steps), "step_s": [round(t, 4) for t in steps],
                      "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}))


if __name__ == "__main__":
    main()
