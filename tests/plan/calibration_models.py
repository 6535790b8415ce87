"""A MobileNetV2-size detector built with onnx.helper (no download): the calibration
speed measurement and the dynamic-shape tests use it.

``python tests/plan/calibration_models.py [--size 320] [--images 32] [--batch 8]
[--engine auto|onnxruntime|reference]`` times :func:`edge_runtime.plan.calibrate` on
random images through it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# MobileNetV2's inverted residual settings: expansion t, channels c, repeats n, stride s.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  # fmt: skip


def mobilenet_v2_detector(
    size: int | None = 320, head_channels: int = 6, seed: int = 0, width: float = 1.0
) -> onnx.ModelProto:
    """MobileNetV2 (3.4 M weights at width 1) with a 1x1 detection head on its last map:
    input ``image`` [N, 3, H, W] (H and W symbolic when ``size`` is None), output
    ``boxes`` [N, head_channels, H/32, W/32]. Conv + bias + ReLU6 (Clip), as exported
    after batch-norm folding; random He-initialized weights."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    count = [0]

    def fresh(hint: str) -> str:
        count[0] += 1
        return f"{hint}_{count[0]}"

    def conv(x: str, cin: int, cout: int, k: int, stride: int, group: int = 1, relu6: bool = True) -> str:
        name = fresh("conv")
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))).astype(
            np.float32
        )
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")])
        out = f"{name}_y"
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], name=name, kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4, group=group))  # fmt: skip
        if not relu6:
            return out
        clipped = f"{name}_relu6"
        nodes.append(helper.make_node("Clip", [out, "zero", "six"], [clipped], name=f"{name}_clip"))
        return clipped

    inits.extend([numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "six")])  # fmt: skip
    c = lambda v: max(8, round(v * width / 8) * 8)
    x, cin = conv("image", 3, c(32), 3, 2), c(32)
    for t, channels, n, s in MOBILENET_V2:
        cout = c(channels)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = conv(x, cin, hidden, 1, 1) if t != 1 else x
            y = conv(y, hidden, hidden, 3, stride, group=hidden)
            y = conv(y, hidden, cout, 1, 1, relu6=False)
            if stride == 1 and cin == cout:
                added = fresh("add")
                nodes.append(helper.make_node("Add", [x, y], [added], name=added))
                y = added
            x, cin = y, cout
    x = conv(x, cin, c(1280), 1, 1)
    head = conv(x, c(1280), head_channels, 1, 1, relu6=False)
    nodes.append(helper.make_node("Identity", [head], ["boxes"], name="boxes"))
    dims = ["N", 3, size, size] if size else ["N", 3, "H", "W"]
    graph = helper.make_graph(
        nodes,
        "mobilenet_v2_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", head_channels, None, None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def main() -> None:
    from edge_runtime.graph import import_onnx, optimize
    from edge_runtime.plan import calibrate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--engine", default="auto", choices=("auto", "onnxruntime", "reference"))
    args = parser.parse_args()
    graph = optimize(import_onnx(mobilenet_v2_detector(None)))
    rng = np.random.default_rng(1)
    batches = [
        {
            "image": rng.standard_normal((min(args.batch, args.images - i), 3, args.size, args.size)).astype(
                np.float32
            )
        }
        for i in range(0, args.images, args.batch)
    ]
    info: dict = {}
    start = time.perf_counter()
    params = calibrate(graph, batches, progress=True, engine=args.engine, info=info)
    seconds = time.perf_counter() - start
    print(f"{args.images} images of {args.size}x{args.size} in batches of {args.batch} on {info['engine']}: "
          f"{seconds:.2f} s ({len(params)} tensors calibrated)")  # fmt: skip


if __name__ == "__main__":
    main()
