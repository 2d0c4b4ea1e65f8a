"""A model trained on Fashion-MNIST, quantized and built with TVM, equals the integer reference on
the whole test set: identical integer logits."""

import numpy as np
import pytest
import torch

from hwq.data.fashion_mnist import DEBIAN_DIR

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")]


def test_test_set_bit_exact():
    from hwq.data import load_fashion_mnist
    from hwq.lower import compile_model
    from hwq.models import ResCNN, TrainConfig, train_float
    from hwq.models.train import to_float_input
    from hwq.qat import quantize_ptq, run_reference
    from hwq.qat.reference import dequantize_output, quantize_input

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    torch.manual_seed(0)
    model = train_float(ResCNN(width=16), train, TrainConfig(epochs=1, train_subset=6000), log=lambda s: None)
    graph = quantize_ptq(model, to_float_input(train.subset(256, seed=1).images))
    cm = compile_model(graph, "x86-host")
    xi = quantize_input(graph, to_float_input(test.images))
    ref = run_reference(graph, xi).numpy()
    xin = xi.numpy().astype(graph.input.dtype)
    out = np.concatenate([cm.run_int(xin[i:i + 1000]) for i in range(0, len(xin), 1000)])
    assert np.array_equal(out, ref), f"{int(np.any(out != ref, axis=1).sum())} of {len(ref)} images differ"
    # predictions from the dequantized logits: the int32 outputs' scales differ per class
    pred = dequantize_output(graph, torch.from_numpy(ref)).argmax(1).numpy()
    assert (pred == test.labels).mean() > 0.5    # a real classifier (chance: 0.1), after one short epoch
