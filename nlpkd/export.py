"""Deployable forms of a trained sequence-classification student: ONNX (torch's exporter, checked against the PyTorch
logits) and dynamic int8 ONNX (onnxruntime), plus `OnnxClassifier`, which runs either form through the same quality
and speed code as the eager models (`nlpkd.classification.evaluate_classifiers`, `nlpkd.report`).

int8 is ONNX only. torch 2.13 still runs `torch.ao.quantization.quantize_dynamic` on `nn.Linear`, but warns that
`torch.ao.quantization` is deprecated and due for removal (its successor is the separate torchao package), so nlpkd
builds nothing on it: `ExportArguments(quantize="int8")` exports to ONNX first and quantises that file.

Needs the `export` extra (`pip install "nlpkd[export]"`: onnx, onnxruntime, onnxscript); without it every entry point
raises an ImportError that says so.
"""

import copy
import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .report import count_parameters

EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # onnxscript: the dynamo exporter writes the graph with it
EXPORT_EXTRA = 'pip install "nlpkd[export]"'
EXPORT_FORMATS = ("none", "onnx")
QUANTIZATIONS = ("none", "int8")
ONNX_FILE = "student.onnx"
INT8_FILE = "student.int8.onnx"
# What each file is, for results.json and the model card.
ONNX_FORM = "ONNX (torch.onnx, dynamo exporter), float32, run by onnxruntime on the CPU"
INT8_FORM = "ONNX with dynamic int8 quantisation (int8 weights per channel, uint8 activations), onnxruntime on the CPU"
# The largest |ONNX − PyTorch| logit difference an export may show, as a share of max(1, largest |logit|). float32
# keeps 24 bits (eps 1.2e-7); onnxruntime fuses and reorders the sums of a BERT forward (attention, layer norm, GELU),
# which moved the logits of the 4L-312H demo student by at most 1.7e-6 (of up to 2.4). 1e-4 leaves that over
# 100× room, yet is far below what a broken export gives: an input that is ignored, or a shape fixed at the example's,
# changes logits by 1e-2 or more, or fails to run.
LOGIT_TOLERANCE = 1e-4
CHECK_BATCH_SIZES = (1, 3, 8)  # the check's batches: the first text alone, then more texts padded to their longest


@dataclass
class ExportArguments:
    r"""
    Parameters:
        export (`str`, *optional*, defaults to `"none"`):
            `"onnx"` writes the distilled student to output_dir/student.onnx with torch's ONNX exporter, checks its
            logits against the PyTorch student's, and measures it next to the eager models in results.json.
        quantize (`str`, *optional*, defaults to `"none"`):
            `"int8"` also writes output_dir/student.int8.onnx, the ONNX student with int8 weights (onnxruntime's
            dynamic quantisation), and measures it. int8 is an ONNX form, so it exports to ONNX even without
            `export="onnx"`.
    """

    export: Literal["none", "onnx"] = field(
        default="none",
        metadata={
            "help": "'onnx': write the student to output_dir/student.onnx (torch.onnx, logits checked against the "
            'PyTorch student) and measure it in results.json and the model card. Needs pip install "nlpkd[export]".',
            "choices": EXPORT_FORMATS,
        },
    )
    quantize: Literal["none", "int8"] = field(
        default="none",
        metadata={
            "help": "'int8': also write output_dir/student.int8.onnx (onnxruntime dynamic int8 quantisation of the "
            "ONNX student; exports to ONNX even without --export onnx) and measure it. Needs the export extra too.",
            "choices": QUANTIZATIONS,
        },
    )

    def __post_init__(self):
        for name, choices in (("export", EXPORT_FORMATS), ("quantize", QUANTIZATIONS)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not a choice: pass --{name} with one of {', '.join(choices)}.")
        if self.forms:
            require_export_packages(f"export={self.export!r}, quantize={self.quantize!r}")

    @property
    def forms(self) -> tuple[str, ...]:
        """The results.json entries these settings add: "student_onnx", and "student_int8" with quantize="int8"."""
        if self.quantize == "int8":
            return ("student_onnx", "student_int8")
        return ("student_onnx",) if self.export == "onnx" else ()


def require_export_packages(reason: str) -> None:
    """Import the `EXPORT_PACKAGES`, raising an ImportError that names those missing, `reason` (what needed them)
    and the extra that installs them."""
    missing = []
    for name in EXPORT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"{reason} needs {', '.join(missing)}, which is not installed: {EXPORT_EXTRA}.")


class OnnxClassifier(torch.nn.Module):
    """An ONNX sequence classifier run by onnxruntime on the CPU, called like a transformers classifier:
    `model(**tokenizer_outputs).logits` (batch, num_labels), with `.device` (the CPU) and `eval()` / `train()` (which
    change nothing), so that `report.measure_latency`, `report.forward_timer` and
    `classification.predict_labels` / `evaluate_classifiers` time and score it like the eager models.

    `num_threads` (default `torch.get_num_threads()`, the eager models' count) sets onnxruntime's intra-op threads,
    so both run on as many cores. `params`: the parameter count of the model it was exported from (None if unknown);
    `details`: what results.json should keep of it (its file, how far its logits are from the PyTorch model's).
    On a GPU run the eager models are timed on the GPU and this on the CPU.
    """

    def __init__(
        self, path: str, params: int | None = None, num_threads: int | None = None, details: dict | None = None
    ):
        super().__init__()
        require_export_packages(f"Running {path}")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = path
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [graph_input.name for graph_input in self.session.get_inputs()]
        self.params = params
        self.details = details or {}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, **inputs: torch.Tensor) -> SequenceClassifierOutput:
        """Logits (batch, num_labels) for token inputs (batch, sequence), which must be the graph's inputs."""
        if set(inputs) != set(self.input_names):
            raise ValueError(
                f"{self.path} takes the inputs {self.input_names}, got {sorted(inputs)}: pass the tokenizer outputs "
                "the model was exported with."
            )
        feed = {name: inputs[name].cpu().numpy().astype(np.int64) for name in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))

    def cost(self) -> dict:
        """`params` and `size_mb` (megabytes, 1e6 bytes, of the .onnx file: what a deployment ships)."""
        return {"params": self.params, "size_mb": os.path.getsize(self.path) / 1e6}


def export_onnx(model: PreTrainedModel, tokenizer, path: str, texts: list[str], max_length: int = 128) -> float:
    """Write `model` (a sequence classifier) to `path` as ONNX with `torch.onnx.export(dynamo=True)`, then check it
    with `check_logits` on `texts`. Returns the largest logit difference the check found.

    The graph's inputs are the tokenizer's `model_input_names` that the model's forward takes (BERT: input_ids,
    token_type_ids, attention_mask), int64 of shape (batch, sequence), both axes dynamic; its output is `logits`
    (batch, num_labels), float32. The weights sit inside the one file (protobuf caps it at 2 GB, far above a
    student); its folder is made when missing. The model is exported in eval mode from a CPU copy when it lives
    elsewhere; its mode is restored.
    """
    require_export_packages(f"Exporting to {path}")
    source = model if model.device.type == "cpu" else copy.deepcopy(model).cpu()
    accepted = inspect.signature(source.forward).parameters
    input_names = [name for name in tokenizer.model_input_names if name in accepted]
    # Two rows, so that the batch axis is not specialised to 1 by the example.
    example = tokenizer(
        [texts[0], texts[1 % len(texts)]], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    was_training = source.training
    source.eval()
    try:
        torch.onnx.export(
            source,
            (),
            path,
            kwargs={name: example[name] for name in input_names},
            input_names=input_names,
            output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in input_names},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    finally:
        source.train(was_training)
    return check_logits(source, OnnxClassifier(path), tokenizer, texts, max_length)


def logit_difference(
    model: PreTrainedModel, exported: OnnxClassifier, tokenizer, texts: list[str], max_length: int = 128
) -> tuple[float, float]:
    """(largest |exported − model| logit difference, largest |model logit|) over the `CHECK_BATCH_SIZES` batches of
    `texts` (cycled when fewer), each padded to its longest text: batches of several sizes and lengths, so that the
    dynamic axes are exercised."""
    differences, magnitudes = [], []
    was_training = model.training
    model.eval()
    try:
        for batch_size in CHECK_BATCH_SIZES:
            batch = [texts[index % len(texts)] for index in range(batch_size)]
            inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            inputs = {name: inputs[name] for name in exported.input_names}
            with torch.inference_mode():
                expected = model(**{name: tensor.to(model.device) for name, tensor in inputs.items()}).logits.cpu()
                actual = exported(**inputs).logits
            differences.append((actual - expected).abs().max().item())
            magnitudes.append(expected.abs().max().item())
    finally:
        model.train(was_training)
    return max(differences), max(magnitudes)


def check_logits(
    model: PreTrainedModel, exported: OnnxClassifier, tokenizer, texts: list[str], max_length: int = 128
) -> float:
    """The largest logit difference of `logit_difference`; raises a ValueError when it exceeds `LOGIT_TOLERANCE` ×
    max(1, largest |logit|): the export computes something else than the model."""
    difference, magnitude = logit_difference(model, exported, tokenizer, texts, max_length)
    tolerance = LOGIT_TOLERANCE * max(1.0, magnitude)
    if difference > tolerance:
        raise ValueError(
            f"The ONNX export {exported.path} gives logits up to {difference:.3g} away from the PyTorch model's "
            f"(tolerance {tolerance:.3g}: {LOGIT_TOLERANCE} × max(1, largest |logit| {magnitude:.3g})) on batches of "
            f"{CHECK_BATCH_SIZES} texts: the export is wrong; the file is kept for inspection. Report it with the "
            "torch and transformers versions, or keep the eager student (--export none)."
        )
    return difference


def quantize_int8(onnx_path: str, int8_path: str) -> None:
    """Write `int8_path`: `onnx_path` with its MatMul and embedding (Gather) weights stored as int8, one scale per
    output channel, and activations quantised to uint8 at run time per batch (`onnxruntime.quantization.
    quantize_dynamic`, QInt8 weights). The rest (biases, layer norms, softmax) stays float32.

    Per channel rather than per tensor: on the 4L-312H demo student (1,057 test reviews) per-channel int8 predicted
    the fp32 student's label on 98.9 % of them and moved logits by at most 0.23 (of up to 2.4), per-tensor on 97.2 %
    with up to 1.18, for files of the same size (14.9 MB, from 57.9 MB).
    """
    require_export_packages(f"Quantising {onnx_path}")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(onnx_path, int8_path, per_channel=True, weight_type=QuantType.QInt8)


def deployable_forms(
    student: PreTrainedModel,
    tokenizer,
    export_args: ExportArguments,
    output_dir: str,
    texts: list[str],
    max_length: int = 128,
) -> dict[str, OnnxClassifier]:
    """The forms `export_args` ask for, written into `output_dir` and ready to measure: {"student_onnx":
    student.onnx, "student_int8": student.int8.onnx} (or fewer), each an `OnnxClassifier` whose `details` hold its
    file name, what it is, and its largest logit difference from `student` on `texts` (the ONNX one checked by
    `check_logits`)."""
    if not export_args.forms:
        return {}
    params = count_parameters(student)
    onnx_path = os.path.join(output_dir, ONNX_FILE)
    difference = export_onnx(student, tokenizer, onnx_path, texts, max_length)
    details = {"file": ONNX_FILE, "form": ONNX_FORM, "max_logit_difference": difference}
    forms = {"student_onnx": OnnxClassifier(onnx_path, params, details=details)}
    if export_args.quantize == "int8":
        int8_path = os.path.join(output_dir, INT8_FILE)
        quantize_int8(onnx_path, int8_path)
        forms["student_int8"] = OnnxClassifier(int8_path, params, details={"file": INT8_FILE, "form": INT8_FORM})
        difference, _ = logit_difference(student, forms["student_int8"], tokenizer, texts, max_length)
        forms["student_int8"].details["max_logit_difference"] = difference
    return forms
