"""A user's own classifier, end to end, on the embedded benchmark; mean ± std over seeds.

  python scripts/own_model_example.py --seeds=0,1,2

What README's "Your own model and data" does, measured: a Keras small CNN trained 3
epochs on 6,500 embedded Fashion-MNIST images (SGD, lr 0.05, cosine decay), converted
with `OODModel.from_classifier` (Gaussian head fitted on 20 mixed batches), fine-tuned
2 epochs with ICE at the paper's lr 0.01 (cosine decay) on batches of 128 images + 256
embedded outlier crops; both evaluated with `ice_tf.evaluate` on 1,000 test images
against 500 MNIST and 500 texture images (full protocol). tests/test_own_model.py runs
the same steps once. About 1 minute per seed on 2 CPU cores.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from ice_tf import metrics  # noqa: E402  (no TensorFlow)

flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; one run each.")
FLAGS = flags.FLAGS


def arrays(name, split, limit=None):
    from ice_tf import data

    dataset = data.make_eval_dataset(name, split, image_shape=(28, 28, 1),
                                     normalization=data.normalization("embedded_fashion_mnist"),
                                     batch_size=1000, limit=limit, seed=0)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def one_seed(seed, x_train, y_train, x_test, y_test, x_out, ood, check_finite=False):
    """{plain_accuracy, plain_auroc_msp, ice_accuracy, ice_auroc_ice} of one seed (fractions)."""
    import keras

    import ice_tf
    from ice_tf import backbones, data, models

    def sgd(learning_rate, steps):
        return keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(learning_rate, steps),
                                    momentum=0.9, nesterov=True)

    keras.utils.set_random_seed(seed)
    steps = -(-len(x_train) // 128)
    classifier = keras.Sequential([keras.Input((28, 28, 1)), backbones.get("small_cnn", (28, 28, 1)),
                                   keras.layers.Dense(10, activation="softmax")])
    classifier.compile(sgd(0.05, 3 * steps), "sparse_categorical_crossentropy")
    classifier.fit(x_train, y_train, batch_size=128, epochs=3, verbose=0)
    plain = ice_tf.evaluate(classifier, (x_test, y_test), ood, verbose=0)
    model = models.OODModel.from_classifier(classifier, (x_train, y_train), outliers=x_out,
                                            fit_batches=20, verbose=0)
    model.compile(sgd(0.01, 2 * steps), loss="ice", weight_decay=5e-4)
    history = model.fit(data.with_outliers((x_train, y_train), x_out), epochs=2, verbose=0)
    if check_finite and not all(np.isfinite(v).all() for v in history.history.values()):
        raise FloatingPointError(f"non-finite training logs: {history.history}")
    tuned = ice_tf.evaluate(model, (x_test, y_test), ood, verbose=0)
    return {"plain_accuracy": plain.accuracy, "plain_auroc_msp": plain.auroc(),
            "ice_accuracy": tuned.accuracy, "ice_auroc_ice": tuned.auroc()}


def main(argv):
    del argv
    x_train, y_train = arrays("embedded_fashion_mnist", "train", 6500)
    x_test, y_test = arrays("embedded_fashion_mnist", "test", 1000)
    x_out, _ = arrays("embedded_outliers", "train", 4000)
    ood = {"mnist": arrays("embedded_mnist", "test", 500)[0],
           "textures": arrays("embedded_textures", "test", 500)[0]}
    runs = []
    for seed in map(int, FLAGS.seeds):
        runs.append(one_seed(seed, x_train, y_train, x_test, y_test, x_out, ood))
        print(f"seed {seed}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in runs[-1].items()))
    print("\n| model | accuracy (%) | mean AUROC (%) |\n|---|---|---|")
    for label, accuracy, auroc in (("classifier, MSP", "plain_accuracy", "plain_auroc_msp"),
                                   ("converted + 2 ICE epochs, ice score", "ice_accuracy", "ice_auroc_ice")):
        cells = [metrics.spread([100 * run[key] for run in runs]) for key in (accuracy, auroc)]
        print(f"| {label} | " + " | ".join(f"{c['mean']:.2f} ± {c['std']:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    app.run(main)
