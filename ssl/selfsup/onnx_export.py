"""ONNX export of an exported backbone, checked against torch, and its int8 quantization.

``selfsup export RUN OUT --onnx [--int8]`` calls :func:`export_onnx` on the finished export folder. The graph
is the backbone exactly as evaluation reads it: ``timm.create_model("local-dir:OUT", num_classes=0)``, whose
``forward`` is ``forward_head(forward_features(x), pre_logits=True)`` (the head is ``Identity``), i.e. the
pooled features (b, 3, h, w) -> (b, d) that kNN and the linear probe use. Export goes through timm's own
``timm.utils.onnx.onnx_export`` (TorchScript exporter, ``onnx.checker`` full check); the batch axis is dynamic,
height/width only on request and only for models that can take another size (a Swin's window partition is
traced for one size, so it is refused in one line).

Every file is checked before it is moved into place:

- ``model.onnx``: onnxruntime vs torch eager on a random batch (another batch size than the traced one, and
  another image size when the size is dynamic); max abs difference at most :data:`PARITY_ATOL`.
- ``model.int8.onnx``: onnxruntime quantization (Jacob et al., CVPR 2018, "Quantization and Training of Neural
  Networks for Efficient Integer-Arithmetic-Only Inference"): transformers get *dynamic* quantization of their
  MatMul/Gemm weights (int8 weights, activations quantized per batch at run time); CNNs, whose weights sit in
  Conv layers that dynamic quantization leaves in fp32, get *static* QDQ quantization (per-channel int8 weights,
  int8 activations with ranges calibrated on a few batches of the run's own shards). The cosine similarity of
  int8 and fp32 features on a real batch must be at least :data:`MIN_INT8_COSINE`.

The measurements are written to ``OUT/onnx.json``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from selfsup.errors import CheckpointError, ConfigError, DataError

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "onnx.json"
PARITY_ATOL = 1e-4
MIN_INT8_COSINE = 0.99
OPSET = 17


def load_backbone(export_dir: str | Path) -> torch.nn.Module:
    """The export as evaluation builds it: plain timm, ``num_classes=0`` (forward = pooled pre-logits features)."""
    try:
        model = timm.create_model(f"local-dir:{Path(export_dir).resolve()}", pretrained=True, num_classes=0)
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        raise CheckpointError(f"{export_dir}: timm cannot load it ({str(e).splitlines()[0][:200]}); "
                              "expected a folder written by `selfsup export`") from None
    return model.eval()


def input_size(model: torch.nn.Module) -> tuple[int, int, int]:
    """(c, h, w) the export was made for (its ``pretrained_cfg.input_size``)."""
    return tuple(model.pretrained_cfg["input_size"])  # type: ignore[return-value]


def ort_session(path: str | Path, *, threads: int | None = None) -> Any:
    """A CPU onnxruntime session (``threads`` intra-op threads; None = onnxruntime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors reach the caller as exceptions; no duplicate log line
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_features(session: Any, x: torch.Tensor) -> torch.Tensor:
    """(b, 3, h, w) -> (b, d) float32 through an onnxruntime session."""
    (out,) = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy().astype(np.float32)})
    return torch.from_numpy(out)


def _max_diff(session: Any, model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        ref = model(x)
    return (ort_features(session, x) - ref).abs().max().item()


def _refuse_dynamic_size(model: torch.nn.Module, name: str, why: str = "") -> None:
    windowed = any(hasattr(m, "window_size") for m in model.modules())  # Swin-style attention windows
    if why or windowed or model.pretrained_cfg.get("fixed_input_size"):
        why = why or ("its attention windows are traced for one size" if windowed else "timm marks it fixed-size")
        raise ConfigError(f"--onnx-dynamic-size: {name} cannot take a dynamic image size in ONNX ({why}); export "
                          f"without --onnx-dynamic-size for a fixed {input_size(model)[1]}x{input_size(model)[2]} "
                          "input")


def export_fp32(model: torch.nn.Module, path: Path, *, dynamic_size: bool = False, name: str = "model",
                atol: float = PARITY_ATOL, seed: int = 0) -> dict[str, Any]:
    """Write ``model`` to ``path`` as ONNX (dynamic batch) and check it against torch eager.

    Returns:
        ``{"max_abs_diff": float, "checked_shapes": [[b, c, h, w], ...], "dynamic_size": bool}``.
    """
    from timm.utils.onnx import onnx_export

    if dynamic_size:
        _refuse_dynamic_size(model, name)
    c, h, w = input_size(model)
    gen = torch.Generator().manual_seed(seed)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():  # the tracer's notes on Python branches: the checks below are the judge
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            onnx_export(model, str(tmp), example_input=torch.randn(2, c, h, w, generator=gen), opset=OPSET,
                        dynamic_size=dynamic_size, use_dynamo=False, check=True)
        session = ort_session(tmp)
        shapes = [(3, c, h, w)]  # another batch size than the traced one: the batch axis must be dynamic
        if dynamic_size:
            shapes.append((2, c, h + h // 2, w + w // 2))
        diffs = []
        for shape in shapes:
            try:
                diffs.append(_max_diff(session, model, torch.randn(*shape, generator=gen)))
            except Exception as e:  # onnxruntime raises its own exception types for shape errors
                why = f"input {list(shape)} fails: {str(e).splitlines()[0][:160]}"
                if shape[2:] != (h, w):
                    _refuse_dynamic_size(model, name, why)
                raise CheckpointError(f"ONNX check failed: {name}: {why}") from None
            if shape[2:] != (h, w) and not diffs[-1] <= atol:
                _refuse_dynamic_size(model, name, f"at {shape[2]}x{shape[3]} it differs from torch by {diffs[-1]:.1e}")
        diff = max(diffs)
        if not diff <= atol:
            raise CheckpointError(f"ONNX check failed: onnxruntime and torch features of {name} differ by "
                                  f"{diff:.2e} (> {atol:g}) on inputs {[list(s) for s in shapes]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"max_abs_diff": diff, "atol": atol, "checked_shapes": [list(s) for s in shapes],
            "dynamic_size": dynamic_size, "opset": OPSET}


def is_conv_dominated(onnx_path: Path) -> bool:
    """True when Conv weights hold more parameters than MatMul/Gemm weights (a CNN, not a transformer)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    sizes = {t.name: int(np.prod(numpy_helper.to_array(t).shape)) for t in graph.initializer}
    totals = {"conv": 0, "matmul": 0}
    for node in graph.node:
        kind = "conv" if node.op_type == "Conv" else "matmul" if node.op_type in ("MatMul", "Gemm") else None
        if kind:
            totals[kind] += sum(sizes.get(i, 0) for i in node.input)
    return totals["conv"] > totals["matmul"]


def calibration_batches(model: torch.nn.Module, shards: str, *, batches: int, batch_size: int) -> list[torch.Tensor]:
    """The first ``batches * batch_size`` images of ``shards`` (in order), with the export's eval preprocessing."""
    from selfsup.build import stream_options
    from selfsup.config import DataConfig
    from selfsup.data.shard_list import expand_shards
    from selfsup.data.stream import ShardStream

    urls = expand_shards(shards, strict=True)
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model), is_training=False)
    in_order = stream_options(DataConfig(shuffle_buffer=0, shard_interleave=1))  # the first images, in order
    stream = ShardStream(urls=urls, transform=lambda img: [tf(img)], batch_size=batch_size, seed=0, **in_order)
    out = []
    for batch in stream:
        out.append(batch["views"][0])
        if len(out) == batches:
            break
    return out


def run_shards(run_dir: str | Path | None) -> str:
    """``data.shards`` of a run folder (its ``config.yaml``): the default int8 calibration and check images."""
    from selfsup.config import load_config

    cfg_path = Path(run_dir or "") / "config.yaml"
    if run_dir is None or not cfg_path.is_file():
        raise DataError(f"{cfg_path if run_dir else 'int8'}: no run config to take data.shards from; expected "
                        "--calibration SHARDS for the int8 calibration/check images")
    shards = load_config(cfg_path).data.shards
    if not shards:
        raise DataError(f"{cfg_path}: data.shards is empty; expected --calibration SHARDS")
    return shards


def quantize_int8(fp32_path: Path, path: Path, *, calib: list[torch.Tensor], static: bool) -> None:
    """onnxruntime int8 quantization of ``fp32_path`` into ``path``: static QDQ (CNN) or dynamic (MatMul/Gemm)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = path.with_name(f".{path.name}.pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs one INFO line per tensor to the root logger
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        if not static:
            quantize_dynamic(str(pre), str(path), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
            return
        input_name = ort_session(fp32_path).get_inputs()[0].name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{input_name: b.numpy()} for b in calib])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)


def export_int8(fp32_path: Path, path: Path, *, calib: list[torch.Tensor], check: torch.Tensor,
                min_cosine: float = MIN_INT8_COSINE) -> dict[str, Any]:
    """Quantize ``fp32_path`` to ``path``; keep it only if int8 features have cosine >= ``min_cosine`` to fp32 on
    ``check``."""
    static = is_conv_dominated(fp32_path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        quantize_int8(fp32_path, tmp, calib=calib, static=static)
        ref = ort_features(ort_session(fp32_path), check)
        q = ort_features(ort_session(tmp), check)
        cos = torch.nn.functional.cosine_similarity(q, ref, dim=1)
        result = {"mode": "static QDQ (per-channel, calibrated)" if static else "dynamic (MatMul/Gemm weights)",
                  "calibration_images": sum(len(b) for b in calib) if static else 0,
                  "check_images": len(check), "cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(),
                  "min_cosine": min_cosine, "size_ratio": tmp.stat().st_size / fp32_path.stat().st_size}
        if not result["cosine_mean"] >= min_cosine:
            raise CheckpointError(f"int8 check failed: {path.name} features have mean cosine "
                                  f"{result['cosine_mean']:.4f} to fp32 on {len(check)} images (< {min_cosine}); "
                                  f"{fp32_path.name} is kept, the int8 file is not written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def export_onnx(export_dir: str | Path, *, int8: bool = False, dynamic_size: bool = False,
                calibration: str | None = None, run_dir: str | Path | None = None, calib_batches: int = 4,
                batch_size: int = 16) -> dict[str, Any]:
    """Write ``model.onnx`` (and ``model.int8.onnx``) into an export folder, each checked; returns ``onnx.json``.

    Args:
        export_dir: a folder written by :func:`selfsup.export.export`.
        int8: also write the int8 model (needs real images: ``calibration`` or the run's ``data.shards``).
        dynamic_size: dynamic height/width as well as batch (refused for fixed-size models such as Swin).
        calibration: shard spec for the calibration and check images (default: ``data.shards`` of ``run_dir``).
        run_dir: the run the export came from.
        calib_batches, batch_size: calibration batches of that many images; the cosine check uses one more.
    """
    export_dir = Path(export_dir)
    model = load_backbone(export_dir)
    name = f"{export_dir} ({model.pretrained_cfg.get('architecture', type(model).__name__)})"
    if int8:  # read the images first: a missing shard must fail before anything is written
        shards = calibration or run_shards(run_dir)
        batches = calibration_batches(model, shards, batches=calib_batches + 1, batch_size=batch_size)
        if not batches:
            raise DataError(f"{shards}: no images read; expected image shards")
    report: dict[str, Any] = {"input_size": list(input_size(model)), "fp32": {"file": ONNX_FILE}}
    report["fp32"].update(export_fp32(model, export_dir / ONNX_FILE, dynamic_size=dynamic_size, name=name))
    report["fp32"]["bytes"] = (export_dir / ONNX_FILE).stat().st_size
    if int8:
        calib, check = batches[:-1] or batches, batches[-1]
        report["int8"] = {"file": INT8_FILE, **export_int8(export_dir / ONNX_FILE, export_dir / INT8_FILE,
                                                             calib=calib, check=check)}
        report["int8"]["bytes"] = (export_dir / INT8_FILE).stat().st_size
    (export_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
    from selfsup.export import record_exported

    record_exported(export_dir, [ONNX_FILE, REPORT_FILE, *([INT8_FILE] if int8 else [])])
    return report


def summary_lines(report: dict[str, Any], out_dir: str | Path) -> list[str]:
    """What ``selfsup export --onnx [--int8]`` prints about the ONNX files."""
    fp = report["fp32"]
    lines = [f"wrote {out_dir}/{fp['file']} ({fp['bytes'] / 2**20:.2f} MiB): onnxruntime vs torch max |diff| = "
             f"{fp['max_abs_diff']:.1e} on inputs {fp['checked_shapes']} (limit {fp['atol']:g})"]
    if "int8" in report:
        q = report["int8"]
        lines.append(f"wrote {out_dir}/{q['file']} ({q['bytes'] / 2**20:.2f} MiB, {q['size_ratio']:.2f}x fp32), "
                     f"{q['mode']}: cosine to fp32 features mean {q['cosine_mean']:.4f}, min {q['cosine_min']:.4f} "
                     f"on {q['check_images']} images (limit {q['min_cosine']})")
    lines.append(f"  measurements in {out_dir}/{REPORT_FILE}")
    return lines
