"""Export the shipped MiniLM model to an ONNX graph once, and keep it under ``var/models/``.

No download: the graph is traced from the package's own weights with ``torch.onnx.export``
(mean pooling and normalisation inside the graph), its attention, GELU and layer norms fused by
ONNX Runtime's transformer optimiser, and, for ``onnx-int8``, its matrix products quantised to
int8 with a scale per output channel. One scale per matrix (the naive recipe) lost too much:
mean cosine to PyTorch 0.935-0.944. Per channel, every product can be int8: mean 0.9925, min 0.98
on 1,000 real chunks; keeping the FFN output products in fp32 raised that to 0.996 but cost 19 %
of the speed, and retrieval was unchanged without it (bench/RESULTS.md, "Issue 14").

The file name carries a key of everything that shapes the graph (model weights, recipe, library
versions), so an upgrade exports again instead of loading a stale graph. Processes that start
together (web and worker) export once: the first takes a file lock, the others wait for it and
then find the graph.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

RECIPE = "v1: eager attention, opset 17, bert fusion, dynamic int8 per channel"


def exported_graph(model_dir: str, cache_dir: Path, *, quantized: bool) -> Path:
    """Path of the (int8 or fp32) ONNX graph of the model in ``model_dir``, exported if missing."""
    target = cache_dir / f"minilm-{'int8' if quantized else 'fp32'}-{_key(model_dir)}.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be exporting this very graph
        if not target.exists():
            _export(model_dir, target, quantized)
            for stale in target.parent.glob(target.name.rsplit("-", 1)[0] + "-*.onnx"):
                if stale != target:
                    stale.unlink()  # an older recipe's or library's graph: never loaded again
    return target


def _key(model_dir: str) -> str:
    # Versions from the installed packages' metadata: importing torch and transformers only to read
    # them would load both into a web process whose ONNX engine never uses them.
    digest = hashlib.sha256(RECIPE.encode())
    for package in ("torch", "transformers", "onnxruntime"):
        digest.update(importlib.metadata.version(package).encode())
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as weights:
        digest.update(weights.read(1 << 20))  # the header and first tensors identify the weights
    digest.update(str(os.path.getsize(os.path.join(model_dir, "model.safetensors"))).encode())
    return digest.hexdigest()[:12]


def _export(model_dir: str, target: Path, quantized: bool) -> None:
    logger.info("exporting the embedding model to ONNX (%s), once", "int8" if quantized else "fp32")
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        traced = Path(work) / "traced.onnx"
        fused = Path(work) / "fused.onnx"
        _trace(model_dir, traced)
        _fuse(traced, fused)
        result = fused
        if quantized:
            result = Path(work) / "int8.onnx"
            _quantize(fused, result)
        os.replace(result, target)  # atomic: a reader never sees half a file


def _trace(model_dir: str, path: Path) -> None:
    import torch
    from transformers import AutoModel

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # Eager attention traces into the pattern ONNX Runtime fuses into one Attention op.
            self.bert = AutoModel.from_pretrained(model_dir, attn_implementation="eager")

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    example = torch.ones(2, 16, dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    torch.onnx.export(
        PooledEncoder().eval(),
        (example, example),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={**axes, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,  # the TorchScript exporter needs no extra package (onnxscript)
    )


def _fuse(source: Path, target: Path) -> None:
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(str(source), model_type="bert", num_heads=12, hidden_size=384, opt_level=1)
    model.save_model_to_file(str(target))


def _quantize(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        per_channel=True,
        weight_type=QuantType.QInt8,
        # The fused ops are in Microsoft's domain, where shape inference cannot type their outputs.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
