"""What of a distillation run leaves the machine on a Hub push: the student's files, nothing else."""

import os
from fnmatch import fnmatch

from transformers.utils.hub import hf_api

# The student folder's files that go to the Hub. Everything else in output_dir stays: checkpoints, the distillation
# projections, optimizer and scheduler state, training_args.bin, the baseline, results.json, logs.
HUB_FILE_PATTERNS = (
    "README.md",
    "*.png",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",  # SentencePiece: spiece.model, sentencepiece.bpe.model
    "*.spm",  # Marian: source.spm, target.spm
)
# A translation student whose decoder writes another vocabulary than its encoder reads keeps that tokenizer here.
TARGET_TOKENIZER_DIR = "target_tokenizer"


class HubPushError(RuntimeError):
    """The student was saved locally, but uploading it to the Hub failed."""


def hub_files(folder: str) -> list[str]:
    """The files of `folder` (paths relative to it, sorted) that a push uploads: the student's weights, config,
    tokenizer, generation config, model card and plots, and the target tokenizer folder of a translation student."""
    files = [
        name
        for name in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, name)) and any(fnmatch(name, pattern) for pattern in HUB_FILE_PATTERNS)
    ]
    target_dir = os.path.join(folder, TARGET_TOKENIZER_DIR)
    if os.path.isdir(target_dir):
        files += [
            f"{TARGET_TOKENIZER_DIR}/{name}"
            for name in os.listdir(target_dir)
            if os.path.isfile(os.path.join(target_dir, name))
        ]
    return sorted(files)


def upload_student(
    folder: str,
    repo_id: str,
    commit_message: str,
    token: str | None = None,
    revision: str | None = None,
    blocking: bool = True,
):
    """Upload `hub_files(folder)` to the existing model repo `repo_id`: a `CommitInfo`, or a `Future` of one when
    not `blocking`."""
    return hf_api().upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        allow_patterns=hub_files(folder),
        commit_message=commit_message,
        token=token,
        revision=revision,
        run_as_future=not blocking,
    )


def push_student_folder(
    folder: str,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload the distilled student",
):
    """Create the model repo `repo_id` if needed and upload the student saved in `folder` (see `hub_files`), e.g.
    after a push at the end of training failed: nothing is trained again."""
    repo_id = hf_api().create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    return upload_student(folder, repo_id, commit_message, token=token)


def push_failed(error: Exception, folder: str, repo_id: str) -> HubPushError:
    """The error to raise when a push fails after the student was saved to `folder`: what failed and what to do."""
    files = ", ".join(hub_files(folder))
    return HubPushError(
        f"The student is saved in {folder} ({files}), but pushing it to the Hub repo {repo_id!r} failed: "
        f"{type(error).__name__}: {error}\n"
        "Log in with `hf auth login` (or set HF_TOKEN, or pass --hub_token), make sure the Hub is reachable "
        "(HF_HUB_OFFLINE unset), then upload the saved student without training again:\n"
        f"    python -c \"from nlpkd.hub import push_student_folder; push_student_folder('{folder}', '{repo_id}')\""
    )
