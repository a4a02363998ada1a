"""The text encoder on ONNX Runtime: export a local sentence-transformers model once, then encode
with an ORT session (fp32, or int8 with dynamic quantisation).

:func:`export_encoder` writes a folder that holds everything queries need at serve time, so a
server never needs the original model folder, the network or a writable folder:

``model.onnx``        the whole sentence-transformers pipeline (transformer, pooling, normalise)
                      as one graph: inputs ``input_ids``/``attention_mask`` (and ``token_type_ids``
                      when the tokenizer makes them), int64 (batch, seq); output
                      ``sentence_embedding`` float32 (batch, dim)
tokenizer files       the model's own tokenizer (``save_pretrained``)
``onnx_encoder.json`` format version, backend, max_seq_length, lower-casing, the int8 recipe and
                      the library versions it was made with

:class:`OnnxEncoderSession` reads such a folder. Tokenisation is the model's own (same
truncation, same stripping and lower-casing as ``sentence_transformers.models.Transformer``), so
the fp32 graph gives the torch model's vectors to float rounding (tests/retrieval/test_onnx_encoder.py).

int8 (``backend = "onnx-int8"``): ``onnxruntime.quantization.quantize_dynamic`` on the exported
graph, weights int8 and activations quantised per batch at run time. The recipe
(:class:`Int8Recipe`) was chosen on Home Depot search (benchmarks/README.md, "Text encoder variants").
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .progress import Progress

__all__ = ["BACKENDS", "Int8Recipe", "DEFAULT_INT8", "OnnxEncoderSession", "cached_export", "default_cache_dir",
           "export_encoder", "export_key", "export_to_temp", "onnx_missing", "read_export_meta"]

log = logging.getLogger(__name__)

#: The text encoder's backends (``[build.text] backend``): the torch model as it is, its ONNX
#: export on ONNX Runtime in fp32, and the same with int8 weights (dynamic quantisation).
BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
_FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
META_FILE = "onnx_encoder.json"
_OPSET = 17


@dataclass(frozen=True)
class Int8Recipe:
    """How the fp32 graph is quantised: ``per_channel`` int8 weight scales (one per output column)
    rather than one per tensor; ``optimize`` runs ONNX Runtime's transformer fusions (attention,
    layer norm, GELU) before quantising, so the fused attention's matrix products are quantised
    too; nodes whose name matches the regular expression ``keep_fp32`` stay in fp32 (e.g. the
    feed-forward output projections, whose GELU inputs have the widest range)."""

    per_channel: bool = True
    optimize: bool = False
    keep_fp32: str = ""


#: The recipe of ``backend = "onnx-int8"``.
DEFAULT_INT8 = Int8Recipe()


def onnx_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run here (a missing package, and how to install it), or None."""
    if backend == "torch":
        return None
    need = ["onnxruntime", "onnx"]
    missing = [name for name in need if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"backend {backend!r} needs the {' and '.join(missing)} package(s), which are not installed: "
            f"pip install {' '.join(missing)} (they come with `pip install tandem`), or use backend 'torch'")


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "onnx", "onnxruntime", "sentence-transformers", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - all installed with the project
            out[name] = "unknown"
    return out


def _whole(model: Any, names: Sequence[str]) -> Any:
    """The sentence-transformers model as a module of plain tensors (what the exporter traces)."""
    import torch

    class Whole(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return self.model(dict(zip(names, tensors, strict=True)))["sentence_embedding"]

    return Whole()


def _export_fp32(model_path: Path, max_seq_length: int, out: Path) -> dict[str, Any]:
    """Export the torch model at ``model_path`` to ``out/model.onnx`` (fp32) with its tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    model.max_seq_length = max_seq_length
    model.eval()
    first = model[0]
    tokenizer = model.tokenizer
    sample = tokenizer(["a sample text", "another, longer sample text for the exporter"], padding=True,
                       truncation=True, max_length=max_seq_length, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["sentence_embedding"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_whole(model, names), tuple(sample[n] for n in names), str(out / MODEL_FILE),
                          input_names=names, output_names=["sentence_embedding"], dynamic_axes=axes,
                          opset_version=_OPSET, dynamo=False)
    tokenizer.save_pretrained(str(out))
    return {"inputs": names, "do_lower_case": bool(getattr(first, "do_lower_case", False)),
            "dim": int((getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)())}


class _DropAdvice(logging.Filter):
    """onnxruntime's quantiser logs through the root logger: a line per skipped MatMul and tensor
    (dozens per export, at INFO) and advice to pre-process that is meant for static quantisation of
    vision models. Neither is for Tandem's users; its warnings about anything else still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "pre-processing before quantization" not in record.getMessage()


def _quantize(folder: Path, recipe: Int8Recipe) -> None:
    """Replace ``folder/model.onnx`` by its int8 (dynamic) quantisation."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = folder / MODEL_FILE
    fp32 = folder / "model_fp32.onnx"
    src.rename(fp32)
    if recipe.optimize:
        from onnxruntime.transformers.optimizer import optimize_model

        # num_heads / hidden_size 0: read from the graph
        optimized = optimize_model(str(fp32), model_type="bert", num_heads=0, hidden_size=0, opt_level=1)
        optimized.save_model_to_file(str(fp32))
    exclude = []
    if recipe.keep_fp32:
        pattern = re.compile(recipe.keep_fp32)
        exclude = [n.name for n in onnx.load(str(fp32)).graph.node if pattern.search(n.name)]
    root = logging.getLogger()
    quiet = _DropAdvice()
    root.addFilter(quiet)  # its advice to pre-process is for static quantisation of vision models
    try:
        quantize_dynamic(str(fp32), str(src), weight_type=QuantType.QInt8, per_channel=recipe.per_channel,
                         nodes_to_exclude=exclude,
                         # the fused operators (com.microsoft domain) have no shape inference
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.removeFilter(quiet)
    fp32.unlink()


def export_encoder(model_path: Path, out: Path, backend: str, max_seq_length: int,
                   recipe: Int8Recipe = DEFAULT_INT8) -> Path:
    """Export the sentence-transformers model at ``model_path`` for ``backend`` ("onnx" or
    "onnx-int8") into the new or empty folder ``out``; returns ``out``."""
    if backend not in BACKENDS or backend == "torch":
        raise ValueError(f"export_encoder: backend must be 'onnx' or 'onnx-int8', got {backend!r}")
    problem = onnx_missing(backend)
    if problem:
        raise RuntimeError(problem)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = _export_fp32(Path(model_path), max_seq_length, out)
    if backend == "onnx-int8":
        _quantize(out, recipe)
    meta = {"format_version": _FORMAT_VERSION, "backend": backend, "max_seq_length": int(max_seq_length),
            "int8": asdict(recipe) if backend == "onnx-int8" else None, "opset": _OPSET,
            "versions": _versions(), **info}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    log.info("text encoder exported for %s in %.1f s (%s)", backend, time.perf_counter() - t0, out)
    return out


def read_export_meta(folder: Path) -> dict[str, Any]:
    """The ``onnx_encoder.json`` of an exported folder; ValueError naming the file when it is
    missing or newer than this code."""
    path = Path(folder) / META_FILE
    if not path.is_file() or not (Path(folder) / MODEL_FILE).is_file():
        raise ValueError(f"{folder}: not an exported text encoder (expected {MODEL_FILE} and {META_FILE}); "
                         "rebuild the bundle with this [build.text] backend")
    meta = json.loads(path.read_text())
    if int(meta.get("format_version", 0)) > _FORMAT_VERSION:
        raise ValueError(f"{path}: format {meta['format_version']} is newer than {_FORMAT_VERSION}; upgrade Tandem")
    return meta


class OnnxEncoderSession:
    """An ONNX Runtime session over an exported folder (:func:`export_encoder`), with ``threads``
    intra-op threads (0: ONNX Runtime's default, one per core) and all graph optimisations on."""

    def __init__(self, folder: Path, threads: int = 0) -> None:
        problem = onnx_missing("onnx")
        if problem:
            raise RuntimeError(problem)
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        self.meta = read_export_meta(self.folder)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(0, int(threads))
        options.inter_op_num_threads = 1
        # threads that spin while waiting take cores from other work on a shared machine
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.inputs = list(self.meta["inputs"])
        self.dim = int(self.meta["dim"])
        self.max_seq_length = int(self.meta["max_seq_length"])
        # a fast tokenizer that sets its padding and truncation from two threads at once raises
        # "Already borrowed"; tokenising is a small part of the time, the session runs in parallel
        self._tokenizer_lock = threading.Lock()

    def _batch(self, texts: list[str]) -> np.ndarray:
        with self._tokenizer_lock:
            tok = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_seq_length,
                                 return_tensors="np")
        feeds = {n: np.ascontiguousarray(tok[n], dtype=np.int64) for n in self.inputs}
        return self.session.run(None, feeds)[0]

    def encode(self, texts: Sequence[str], batch_size: int, progress: bool = False) -> np.ndarray:
        """float32 (n, dim), rows of unit L2 norm, in the order of ``texts``. Texts are stripped
        (and lower-cased where the model says so) and batched by length, as sentence-transformers does.
        ``progress``: a bar on a terminal, periodic log lines elsewhere (a build's text stage)."""
        prepared = [str(t).strip() for t in texts]
        if self.meta.get("do_lower_case"):
            prepared = [t.lower() for t in prepared]
        out = np.empty((len(prepared), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in prepared], kind="stable")
        with Progress("text encoding", len(order), unit="text", logger=log, enabled=progress) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                out[rows] = self._batch([prepared[i] for i in rows])
                bar.update(len(rows))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


def export_to_temp(model_path: Path, backend: str, max_seq_length: int,
                   recipe: Int8Recipe = DEFAULT_INT8) -> tempfile.TemporaryDirectory:
    """:func:`export_encoder` into a new temporary folder (removed with the returned object)."""
    tmp = tempfile.TemporaryDirectory(prefix="tandem-onnx-")
    export_encoder(model_path, Path(tmp.name), backend, max_seq_length, recipe)
    return tmp


def default_cache_dir() -> Path:
    """Where exports are kept between builds: ``$TANDEM_CACHE_DIR/text_encoders``, else
    ``$XDG_CACHE_HOME/tandem/text_encoders`` (``~/.cache`` when unset)."""
    explicit = os.environ.get("TANDEM_CACHE_DIR")
    if explicit:
        return Path(explicit) / "text_encoders"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tandem" / "text_encoders"


def export_key(model_path: Path, backend: str, max_seq_length: int, recipe: Int8Recipe = DEFAULT_INT8) -> str:
    """sha256 over the model folder's content (every file's path and bytes), the backend, the
    truncation, the int8 recipe, this export's format and the library versions that make it."""
    h = hashlib.sha256()
    folder = Path(model_path)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):  # noqa: B023 - f is this iteration's file
                h.update(chunk)
    settings = {"backend": backend, "max_seq_length": int(max_seq_length), "format": _FORMAT_VERSION,
                "int8": asdict(recipe) if backend == "onnx-int8" else None, "opset": _OPSET, "versions": _versions()}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:32]


def cached_export(model_path: Path, backend: str, max_seq_length: int, recipe: Int8Recipe = DEFAULT_INT8,
                  cache_dir: Path | None = None) -> Path | None:
    """The exported folder for these settings from the export cache (:func:`default_cache_dir`),
    exported into it on a miss (written beside, then renamed: a reader never sees half an export).
    None when the cache folder cannot be written; the caller then exports to a temporary folder."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / export_key(model_path, backend, max_seq_length, recipe)
    if (folder / META_FILE).is_file():
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
    except OSError as exc:
        log.warning("text encoder export cache %s is not writable (%s): exporting to a temporary folder", root, exc)
        return None
    try:
        export_encoder(model_path, tmp, backend, max_seq_length, recipe)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process renamed its export there first
            if not (folder / META_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
