"""A distilled student's model card: Hub metadata, the teacher-vs-student-vs-baseline table, the set-up, the plots.

The card is rendered from `templates/model_card.md` by `huggingface_hub.ModelCard.from_template`; its YAML header
(base_model, tags, datasets, pipeline_tag, language, license, model-index) is what the Hub reads.
"""

import dataclasses
import enum
import os
import platform
import re
import shlex
from pathlib import Path

import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .plots import LOSS_CURVES, QUALITY_VS_LATENCY, plot_loss_curves, plot_quality_vs_latency
from .report import QUALITY_KEYS, health_warnings, markdown_results_table

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
TAGS = ("distillation", "nlpkd")
METRIC_NAMES = {"accuracy": "accuracy", "f1": "macro F1", "bleu": "BLEU", "chrf": "chrF", "perplexity": "perplexity"}
# Set by TrainingArguments.__post_init__ from the machine, whatever was asked for.
DERIVED_ARGUMENTS = ("accelerator_config", "dataloader_pin_memory")
# A Hub model id: `name` or `owner/name` (a local path such as outputs/teachers/x is not one).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

CITATIONS = {
    "hinton": """@article{hinton2015distilling,
  title = {Distilling the Knowledge in a Neural Network},
  author = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year = {2015}
}""",
    "tinybert": """@inproceedings{jiao2020tinybert,
  title = {{TinyBERT}: Distilling {BERT} for Natural Language Understanding},
  author = {Jiao, Xiaoqi and Yin, Yichun and Shang, Lifeng and Jiang, Xin and Chen, Xiao and Li, Linlin and
            Wang, Fang and Liu, Qun},
  booktitle = {Findings of the Association for Computational Linguistics: EMNLP 2020},
  pages = {4163--4174},
  year = {2020}
}""",
    "minilm": """@inproceedings{wang2020minilm,
  title = {{MiniLM}: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers},
  author = {Wang, Wenhui and Wei, Furu and Dong, Li and Bao, Hangbo and Yang, Nan and Zhou, Ming},
  booktitle = {Advances in Neural Information Processing Systems},
  volume = {33},
  pages = {5776--5788},
  year = {2020}
}""",
    "kim_rush": """@inproceedings{kim2016sequence,
  title = {Sequence-Level Knowledge Distillation},
  author = {Kim, Yoon and Rush, Alexander M.},
  booktitle = {Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing},
  pages = {1317--1327},
  year = {2016}
}""",
}


def write_model_card(output_dir: str, results: dict | None = None, log_history: list[dict] = (), **card) -> str:
    """Draw the plots (quality against latency from `results`, losses from `log_history`) into `output_dir`, write
    the card that shows them as `output_dir/README.md` and return its path. `card`: the arguments of `model_card`.
    """
    os.makedirs(output_dir, exist_ok=True)
    quality_plot = plot_quality_vs_latency(results, os.path.join(output_dir, QUALITY_VS_LATENCY)) if results else None
    loss_plot = plot_loss_curves(log_history, os.path.join(output_dir, LOSS_CURVES))
    plots = []
    for title, name, drawn in (
        ("quality vs latency", QUALITY_VS_LATENCY, quality_plot),
        ("training losses", LOSS_CURVES, loss_plot),
    ):
        if drawn:
            plots.append((title, name))
        elif os.path.exists(os.path.join(output_dir, name)):  # a picture of an earlier run must not go out
            os.remove(os.path.join(output_dir, name))
    path = os.path.join(output_dir, "README.md")
    model_card(results=results, plots=plots, **card).save(path)
    return path


def model_card(
    *,
    model_name: str,
    base_model: str | None,
    setup: dict[str, str],
    training_arguments: dict,
    hardware: dict[str, str],
    command: str,
    citations: list[str],
    results: dict | None = None,
    plots: list[tuple[str, str]] = (),
    pipeline_tag: str | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: list[str] = (),
    datasets: list[str] | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    eval_split: str | None = None,
) -> ModelCard:
    """The card of a student distilled from `base_model` (kept in the metadata only when it is a Hub model id).

    `results` is a recipe's results.json content (teacher/student/baseline dicts); its student's scores go into the
    `model-index`. `setup`: the distillation set-up, one line each; `citations`: keys of `CITATIONS`; `plots`:
    (title, relative path) of the pictures; `datasets`: Hub dataset ids, `dataset_name` its description.
    """
    base_model = base_model if base_model and HUB_ID.match(base_model) and not os.path.exists(base_model) else None
    student = (results or {}).get("student") or {}
    metadata = ModelCardData(
        base_model=base_model,
        datasets=datasets,
        language=language,
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=[*TAGS, *tags],
        model_name=model_name,
        eval_results=_eval_results(student, pipeline_tag, datasets, dataset_name, dataset_config, eval_split),
    )
    teacher = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a local teacher checkpoint"
    summary = f"A student model distilled from {teacher} with nlpkd"
    summary += f" on {dataset_name}." if dataset_name else "."
    return ModelCard.from_template(
        metadata,
        template_path=str(TEMPLATE),
        model_name=model_name,
        summary=summary,
        results_table=markdown_results_table(results) if results else None,
        warnings=health_warnings(results) if results else [],
        majority_class_rate=(results or {}).get("majority_class_rate"),
        speed_rounds=len((results or {}).get("speed_rounds") or []),
        search=search_summary((results or {}).get("search")),
        deployment=deployment_lines(results or {}),
        eval_split=eval_split,
        plots=plots,
        setup=setup,
        training_arguments={name: _table_cell(value) for name, value in training_arguments.items()},
        hardware=hardware,
        command=command,
        citations=[CITATIONS[key] for key in dict.fromkeys(citations)],
    )


def _eval_results(student, pipeline_tag, datasets, dataset_name, dataset_config, split) -> list[EvalResult] | None:
    """The student's measured scores for the model-index; None when the task or the data are unknown."""
    # The model-index wants a dataset id: the Hub's, or one made from the description of local data.
    dataset_type = datasets[0] if datasets else re.sub(r"[^\w.]+", "-", dataset_name or "").strip("-").lower()
    scores = {key: student[key] for key in QUALITY_KEYS if student.get(key) is not None}
    if not (pipeline_tag and dataset_type and scores):
        return None
    return [
        EvalResult(
            task_type=pipeline_tag,
            dataset_type=dataset_type,
            dataset_name=dataset_name or dataset_type,
            dataset_config=dataset_config,
            dataset_split=split,
            metric_type=key,
            metric_name=METRIC_NAMES[key],
            metric_value=value,
        )
        for key, value in scores.items()
    ]


def deployment_lines(results: dict) -> list[str]:
    """One line per deployable form of the student in `results` (a model entry with a `file`, such as
    `nlpkd.export`'s student.onnx): what it is, its size, its speed-up over the teacher at batch 1 and 32 and its
    quality, each next to the eager student's, and how far its logits are from the eager student's."""
    student = results.get("student") or {}
    lines = []
    for entry in results.values():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        parts = [f"{entry['size_mb']:.1f} MB"]
        parts[-1] += f" (eager student {student['size_mb']:.1f})" if "size_mb" in student else ""
        if entry.get("speedup_b1") and entry.get("speedup_b32"):
            speedup = f"{entry['speedup_b1']:.1f}× the teacher's speed at batch 1 and "
            speedup += f"{entry['speedup_b32']:.1f}× at batch 32"
            if student.get("speedup_b1") and student.get("speedup_b32"):
                speedup += f" (eager student {student['speedup_b1']:.1f}× and {student['speedup_b32']:.1f}×)"
            parts.append(speedup)
        for key in (key for key in QUALITY_KEYS if entry.get(key) is not None):
            scale, number = (100, "{:.1f} %") if key in ("accuracy", "f1") else (1, "{:.2f}")
            parts.append(f"{METRIC_NAMES[key]} {number.format(entry[key] * scale)}")
            parts[-1] += f" (eager student {number.format(student[key] * scale)})" if key in student else ""
        if entry.get("max_logit_difference") is not None:
            parts.append(f"logits at most {entry['max_logit_difference']:.2g} from the eager student's")
        lines.append(f"`{entry['file']}`: {entry['form']}; " + "; ".join(parts))
    return lines


def search_summary(search: dict | None) -> dict | None:
    """The temperature/weight search of results.json (`nlpkd.search`) as the card shows it: a sentence on the best
    trial and a Markdown table of every trial's settings and score."""
    if not search:
        return None
    names = list(search["best_settings"])
    rows = ["| trial | " + " | ".join(f"`{name}`" for name in names) + f" | {search['metric']} |"]
    rows.append("|---" * (len(names) + 2) + "|")
    for trial in search["trials"]:
        cells = [str(trial["trial"]), *(_number(trial[name]) for name in names)]
        score = "pruned" if trial["score"] is None else _number(trial["score"])
        rows.append("| " + " | ".join([*cells, score]) + " |")
    best = ", ".join(f"{name} = {_number(value)}" for name, value in search["best_settings"].items())
    return {
        "best": f"trial {search['best_trial']} of {len(search['trials'])}, {search['metric']} "
        f"{_number(search['best_score'])} ({search['direction']}), at {best}",
        "table": "\n".join(rows),
    }


def distillation_setup(args, layer_map, student: torch.nn.Module) -> dict[str, str]:
    """One line each for the losses and their weights, the temperature, the layer map and the student's shape."""
    losses = []
    if args.hard_label_weight > 0:
        losses.append(f"hard_loss × {args.hard_label_weight} (the student's own loss on the labels)")
    if args.logit_weight > 0:
        losses.append(f"logit_loss × {args.logit_weight} ({args.logit_loss} of the logits at T = {args.temperature})")
    if args.hidden_weight > 0:
        losses.append(f"hidden_loss × {args.hidden_weight} (MSE of the projected hidden states)")
    if args.attention_weight > 0:
        losses.append(f"attention_loss × {args.attention_weight} ({args.attention_loss} of the attention maps)")
    if getattr(args, "relation_weight", 0) > 0:
        layer = args.relation_teacher_layer or "last"
        losses.append(f"relation_loss × {args.relation_weight} (MiniLMv2 Q/K/V relations, teacher layer {layer})")
    setup = {"losses": "; ".join(losses)}
    if hasattr(args, "cross_attention_weight") and (args.hidden_weight > 0 or args.attention_weight > 0):
        setup["stack weights"] = (
            f"encoder {args.encoder_weight}, decoder {args.decoder_weight}, cross-attention "
            f"{args.cross_attention_weight}"
        )
    if isinstance(layer_map, dict):
        layer_map = "; ".join(f"{stack} {layers}" for stack, layers in layer_map.items())
    setup["layer map (student layer m learns from teacher layer g(m))"] = str(layer_map or "-")
    parameters = sum(parameter.numel() for parameter in student.parameters())
    setup["student"] = f"{model_shape(student.config)}; {parameters / 1e6:.2f} M parameters"
    return setup


def model_shape(config) -> str:
    """`bert: 4 layers, hidden 312, 12 heads, FFN 1200`; per stack for an `EncoderDecoderModel`."""
    if getattr(config, "is_encoder_decoder", False) and hasattr(config, "encoder") and hasattr(config, "decoder"):
        return f"{config.model_type}: encoder {model_shape(config.encoder)}, decoder {model_shape(config.decoder)}"
    fields = (
        ("layers", "num_hidden_layers"),
        ("decoder layers", "decoder_layers"),
        ("hidden", "hidden_size"),
        ("heads", "num_attention_heads"),
        ("FFN", "intermediate_size"),
    )
    parts = [f"{label} {value}" for label, name in fields if (value := getattr(config, name, None)) is not None]
    return f"{config.model_type}: " + ", ".join(parts)


def non_default_arguments(args) -> dict:
    """The fields of `args` (a `TrainingArguments` dataclass) whose values differ from the field defaults, tokens left
    out. Read from the fields: a fresh instance to compare with would reset the accelerator state in use."""
    values = args.to_dict()  # enums as their values, as in the defaults below
    changed = {}
    for field in dataclasses.fields(args):
        name = field.name
        if not field.init or name not in values or name.endswith("token") or name in DERIVED_ARGUMENTS:
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if isinstance(default, enum.Enum):
            default = default.value
        if default in (None, "", "none") and not values[name]:  # "unset", resolved to [] or False by __post_init__
            continue
        if values[name] != default:
            changed[name] = values[name]
    return changed


def hardware(device: torch.device) -> dict[str, str]:
    """The accelerator (when training ran on one), the CPU and the software versions."""
    info = {}
    if device.type == "cuda":
        info["GPU"] = torch.cuda.get_device_name(device)
    info["CPU"] = f"{_cpu_model()} ({torch.get_num_threads()} torch threads)"
    info["software"] = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}"
    )
    return info


def reproduce_command(script: str, argv: list[str]) -> str:
    """`python <script> <argv>`, quoted for a POSIX shell."""
    return "python " + shlex.join([script, *argv])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def _table_cell(value) -> str:
    return str(value).replace("|", "\\|")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _table_cell(value)
