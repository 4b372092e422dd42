"""The offline translation default: English–Spanish verse pairs from two public-domain SWORD Bibles.

The modules ship in the Debian packages `sword-text-web` (World English Bible, NRSVA versification) and
`sword-text-sparv` (Reina-Valera 1909, KJV versification); they are read with `pysword`, no `diatheke` needed.
"""

import html
import json
import logging
import os
import re
from pathlib import Path

from .fingerprint import file_digest, fingerprint
from .progress import Progress

logger = logging.getLogger(__name__)

ENGLISH_MODULE = "engWEB2015eb"
SPANISH_MODULE = "spaRV1909eb"
SWORD_INSTALL = (
    "apt-get download sword-text-web sword-text-sparv && for deb in sword-text-*.deb; do dpkg -x $deb .assets/sword; "
    "done (or `make venv`, which does this), then point SWORD_PATH at .assets/sword/usr/share/sword"
)
# The versifications disagree by one verse in these chapters: their pairs would be misaligned.
MISNUMBERED_CHAPTERS = {("Num", 13), ("1Sam", 24), ("2Chr", 33), ("Ps", 17), ("Ps", 58), ("Jonah", 2)}
MAX_LENGTH_RATIO = 2.0

_DROPPED_ELEMENTS = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.DOTALL)
_PSALM_TITLE = re.compile(r'<title\b[^>]*type="psalm"[^>]*>(.*?)</title>', re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?)\]»”’])")
_DROP_CAP = re.compile(r"^([¡¿(«“‘]*)([A-ZÁÉÍÓÚÑÜ]{2,})\b")


def sword_path() -> str:
    """The SWORD library holding both modules: `$SWORD_PATH`, the repo's `.assets/sword`, or /usr/share/sword."""
    candidates = [
        os.environ.get("SWORD_PATH"),
        Path(__file__).resolve().parent.parent / ".assets/sword/usr/share/sword",
    ]
    candidates += [Path.home() / ".sword", "/usr/share/sword"]
    for candidate in filter(None, candidates):
        if all(_has_module(Path(candidate), name) for name in (ENGLISH_MODULE, SPANISH_MODULE)):
            return str(candidate)
    raise FileNotFoundError(
        f"The default translation data needs the SWORD modules {ENGLISH_MODULE} and {SPANISH_MODULE}, found in none "
        f"of {[str(c) for c in filter(None, candidates)]}. Install them with: {SWORD_INSTALL}."
    )


def _has_module(path: Path, name: str) -> bool:
    return any((path / "mods.d" / f"{spelling}.conf").is_file() for spelling in (name, name.lower()))


def clean_verse(markup: str) -> str:
    """Plain text of one OSIS verse: notes and section titles dropped, a psalm's title kept as text (the Spanish
    Bible has it inline), every other tag replaced by a space where it stood (a tag can be the only word boundary)."""
    markup = _PSALM_TITLE.sub(r" \1 ", markup)
    markup = _DROPPED_ELEMENTS.sub(" ", markup)
    text = html.unescape(_TAG.sub(" ", markup))
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", _SPACES.sub(" ", text)).strip()
    return re.sub(r"([¡¿(«“‘])\s+", r"\1", text)


def undo_drop_cap(text: str) -> str:
    """Reina-Valera prints a chapter's first word in capitals ("EN el principio"): write it as a normal word."""
    return _DROP_CAP.sub(lambda match: match.group(1) + match.group(2).capitalize(), text)


def read_verses(
    module_name: str, path: str | None = None, books: set[str] | None = None, show_progress: bool = True
) -> dict[tuple[str, int, int], str]:
    """Every non-empty verse of a SWORD Bible (or of the OSIS `books`), keyed by (OSIS book, chapter, verse); with
    `show_progress`, the verses read and the time left are logged as it goes (`nlpkd.progress`)."""
    from pysword.modules import SwordModules

    modules = SwordModules(path or sword_path())
    modules.parse_modules()
    bible = modules.get_bible_from_module(module_name)
    chosen = [
        book
        for testament in bible.get_structure().get_books().values()
        for book in testament
        if books is None or book.osis_name in books
    ]
    total = sum(sum(book.chapter_lengths) for book in chosen)
    progress = Progress(f"reading {module_name}", total, "verses", show_progress)
    verses = {}
    for book in chosen:
        keys = [
            (book.osis_name, chapter, verse)
            for chapter, length in enumerate(book.chapter_lengths, start=1)
            for verse in range(1, length + 1)
        ]
        for key, markup in zip(keys, bible.get_iter(books=[book.name], clean=False), strict=True):
            text = clean_verse(markup)
            if text:
                verses[key] = text
        progress.update(len(keys))
    return verses


def verse_pairs(
    path: str | None = None, books: set[str] | None = None, show_progress: bool = True
) -> dict[str, list[str]]:
    """Aligned (en, es) verse pairs in canonical order, without the misnumbered chapters and without pairs whose
    character lengths differ by more than MAX_LENGTH_RATIO (a sign of a verse split differently).

    Reading both Bibles takes about a minute (pysword unpacks a whole book per verse), so the full set is cached
    as JSON under $NLPKD_CACHE (default ~/.cache/nlpkd), keyed by the module files' names and sizes. With
    `show_progress`, the reading logs its progress.
    """
    path = path or sword_path()
    if books is not None:
        return _aligned(
            read_verses(ENGLISH_MODULE, path, books, show_progress),
            read_verses(SPANISH_MODULE, path, books, show_progress),
        )
    cache = _cache_file(path)
    if cache.is_file():
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except ValueError:  # written before writes went through a temporary file, and cut short
            logger.warning("The verse cache %s is cut short: reading the Bibles again.", cache)
    pairs = _aligned(
        read_verses(ENGLISH_MODULE, path, None, show_progress), read_verses(SPANISH_MODULE, path, None, show_progress)
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial")  # a run stopped while writing leaves no cut cache behind
    partial.write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, cache)
    return pairs


def _cache_file(path: str) -> Path:
    files = sorted(p for p in Path(path).rglob("*") if p.is_file() and ("ztext" in p.parts or p.suffix == ".conf"))
    signature = [(str(p.relative_to(path)), p.stat().st_size) for p in files]
    code = file_digest(__file__)  # a change in the cleaning rules is a new cache
    cache_root = Path(os.environ.get("NLPKD_CACHE", Path.home() / ".cache" / "nlpkd"))
    return cache_root / f"bible-pairs-{fingerprint(signature, code)}.json"


def _aligned(english: dict, spanish: dict) -> dict[str, list[str]]:
    pairs = {"en": [], "es": []}
    for key, source in english.items():
        target = spanish.get(key)
        if target is None or key[:2] in MISNUMBERED_CHAPTERS:
            continue
        if max(len(source), len(target)) > MAX_LENGTH_RATIO * min(len(source), len(target)):
            continue
        pairs["en"].append(source)
        pairs["es"].append(undo_drop_cap(target))
    return pairs
