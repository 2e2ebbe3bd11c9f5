"""Raw text of a perplexity split: wikitext (hub or local copy), enwik8 (local or downloaded once), a file.

Each text dataset is a registered option (lsh_bitnet/tasks/perplexity.py) naming its functions here: `check_*`
runs before any model or data is loaded, `load_*` returns the split as one string, documents joined as the
dataset gives them (SPEC section 5), `*_source` the local file behind it (the resume key). `load_text`,
`data_source` and `data_fingerprint` ask the option, so a plug-in's text dataset needs no edit here.
"""
import os
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.data.files import path_problem, read_text_file  # noqa: F401  (read_text_file re-exported)
from lsh_bitnet.config import config_value

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"valid": "validation"}  # wikitext's own file names say "valid"
TEXT_FILE_SPLIT = "all"  # a single file has no split of its own

# Local wikitext layouts: the official zip (wiki.test.raw), or plain {split}.txt files.
WIKITEXT_FILES = {
    "train": ("wiki.train.raw", "train.txt"),
    "validation": ("wiki.valid.raw", "valid.txt", "validation.txt"),
    "test": ("wiki.test.raw", "test.txt"),
}

# The standard enwik8 split (Hutter prize file, used since Mahoney's benchmark): the first 90M bytes
# train, the next 5M validation, the last 5M test.
ENWIK8_BYTES = 100_000_000
ENWIK8_BOUNDS = {"train": (0, 90_000_000), "validation": (90_000_000, 95_000_000),
                 "test": (95_000_000, 100_000_000)}
ENWIK8_MEMBER = "enwik8"  # the one file inside enwik8.zip
DOWNLOAD_CHUNK = 1 << 20




def _option(dataset_cfg):
    from lsh_bitnet.tasks.base import dataset_option

    return dataset_option(config_value(dataset_cfg, "name"))


def canonical_split(dataset_cfg) -> str:
    """dataset.split, aliases resolved, checked against the splits the dataset option has."""
    split = str(config_value(dataset_cfg, "split", "test"))  # a Split enum member is its string
    split = SPLIT_ALIASES.get(split, split)
    option = _option(dataset_cfg)
    allowed = option.splits or SPLITS
    if split not in allowed:
        aliases = [a for a, s in SPLIT_ALIASES.items() if s in allowed]
        raise ValueError(f"dataset.split={split!r} is not allowed for dataset={option.name}: allowed "
                         f"{', '.join(f'dataset.split={s}' for s in allowed)}"
                         + (f" ({', '.join(aliases)} as an alias of validation)" if aliases else "")
                         + (" (a single file has no splits: leave dataset.split at its default)"
                            if allowed == (TEXT_FILE_SPLIT,) else ""))
    return split


def _wikitext_file(path: Path, split: str) -> Path:
    """The file holding `split` under a local wikitext copy: the path itself when it is a file."""
    if path.is_file():
        return path
    for name in WIKITEXT_FILES[split]:
        for candidate in (path / name, *sorted(path.glob(f"*/{name}"))):  # also one level down (zip layout)
            if candidate.is_file():
                return candidate
    raise ValueError(f"dataset.path={str(path)!r} holds no file for split {split!r}: expected one of "
                     f"{list(WIKITEXT_FILES[split])} in it (or pass the file itself as dataset.path)")


def _enwik8_local(path: Path) -> Path:
    """A local enwik8 raw file or zip: the path itself, or `enwik8` / `enwik8.zip` inside a directory."""
    if path.is_file():
        return path
    for name in (ENWIK8_MEMBER, ENWIK8_MEMBER + ".zip"):
        if (path / name).is_file():
            return path / name
    raise ValueError(f"dataset.path={str(path)!r} is neither an enwik8 file nor a directory holding "
                     f"enwik8 or enwik8.zip: point dataset.path at the file, or set dataset.path=null to download it")


# ----------------------------------------------------------------------------- checks (no loading)
def check_text(dataset_cfg) -> str:
    """What every text dataset checks (max_chars, split); returns the canonical split."""
    max_chars = config_value(dataset_cfg, "max_chars")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"dataset.max_chars must be >= 1 or null for the whole split (got {max_chars})")
    return canonical_split(dataset_cfg)


def check_text_file(dataset_cfg) -> None:
    check_text(dataset_cfg)
    path = config_value(dataset_cfg, "path")
    if not path:
        raise ValueError("dataset.path is required for dataset=text_file: pass dataset.path=/abs/file.txt")
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(f"dataset.path={path!r} {problem}: pass the absolute path of a readable UTF-8 "
                         f"text file, e.g. dataset.path=/abs/file.txt")


def _existing(path: str, hint: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"dataset.path={path!r} {path_problem(p)}: point it at {hint}")
    if not p.is_dir() and path_problem(p) is not None:  # a FIFO, a device: never a dataset
        raise ValueError(f"dataset.path={path!r} {path_problem(p)}: point it at a file or a directory")
    return p


def check_wikitext(dataset_cfg) -> None:
    split, path = check_text(dataset_cfg), config_value(dataset_cfg, "path")
    if path is not None:
        _wikitext_file(_existing(path, "a directory holding wiki.{train,valid,test}.raw or {train,valid,test}.txt"),
                       split)


def check_enwik8(dataset_cfg) -> None:
    check_text(dataset_cfg)
    path = config_value(dataset_cfg, "path")
    if path is not None:
        _enwik8_local(_existing(path, "the enwik8 file or enwik8.zip, or null to download it"))


# ----------------------------------------------------------------------------- text_file
def load_text_file(dataset_cfg, split: str, cache_dir: Path) -> str:
    return read_text_file(Path(config_value(dataset_cfg, "path")).expanduser())


def text_file_source(dataset_cfg, cache_dir: Path) -> Optional[Path]:
    return Path(config_value(dataset_cfg, "path")).expanduser()


# ----------------------------------------------------------------------------- wikitext
def wikitext_source(dataset_cfg, cache_dir: Path) -> Optional[Path]:
    """The local file of the split (None: read from the hub, named by id)."""
    path = config_value(dataset_cfg, "path")
    return _wikitext_file(Path(path).expanduser(), canonical_split(dataset_cfg)) if path is not None else None


def load_wikitext(dataset_cfg, split: str, cache_dir: Path) -> str:
    path = config_value(dataset_cfg, "path")
    if path is not None:
        return read_text_file(_wikitext_file(Path(path).expanduser(), split))
    hub_id, hub_config = config_value(dataset_cfg, "hub_id"), config_value(dataset_cfg, "hub_config")
    local_fix = (f"Use a local copy instead: download and unzip {hub_config}.zip (it holds wiki.train.raw, "
                 f"wiki.valid.raw, wiki.test.raw), or save the splits as train.txt / valid.txt / test.txt, then "
                 f"pass dataset.path=DIR")
    from lsh_bitnet.models.checks import hub_reachable

    # Offline, `datasets` retries for 40-60 s before failing: probe once (ms when DNS fails, at most
    # HUB_PROBE_TIMEOUT_S) and then read only its local cache.
    online = hub_reachable()
    try:
        import datasets

        if online:
            ds = datasets.load_dataset(hub_id, hub_config, split=split)
        else:
            ds = _load_cached_dataset(datasets, hub_id, hub_config, split)
    except Exception as exc:  # offline, firewall, hub outage: any of them needs the same advice
        why = (f"the Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set) and it is not in the local "
               f"cache ({type(exc).__name__}: {exc})") if not online else f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"could not load {hub_id} ({hub_config}, split {split}): {why}.\n{local_fix}") from exc
    return "".join(ds["text"])  # each row already ends with its own newline


def _load_cached_dataset(datasets, hub_id: str, hub_config: str, split: str):
    """load_dataset from the local cache only (no request, no retries)."""
    previous = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(hub_id, hub_config, split=split)
    finally:
        datasets.config.HF_HUB_OFFLINE = previous


# ----------------------------------------------------------------------------- enwik8
def split_bytes(data: bytes, split: str, bounds=None) -> bytes:
    start, end = (bounds or ENWIK8_BOUNDS)[split]
    return data[start:end]


def _utf8_lead_len(byte: int) -> int:
    """Length of the UTF-8 sequence that `byte` starts; 0 for a continuation byte (10xxxxxx)."""
    if byte < 0x80:
        return 1
    if byte < 0xC0:
        return 0
    return 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4


def decode_cut(raw: bytes) -> str:
    """UTF-8 decode of a slice cut out of a longer text: a character that a cut splits becomes one
    U+FFFD at that end; the bytes in between are decoded as they are."""
    head = 0
    while head < min(3, len(raw)) and _utf8_lead_len(raw[head]) == 0:
        head += 1
    tail = len(raw)
    # Walk back over at most 3 continuation bytes to the last lead byte; cut it if its sequence overruns.
    i = len(raw) - 1
    while i >= max(head, len(raw) - 4) and _utf8_lead_len(raw[i]) == 0:
        i -= 1
    if i >= head and i + _utf8_lead_len(raw[i]) > len(raw):
        tail = i
    body = raw[head:tail].decode("utf-8", errors="replace")
    return ("\ufffd" if head else "") + body + ("\ufffd" if tail < len(raw) else "")


def _download(url: str, dest: Path) -> Path:
    from lsh_bitnet.console import progress

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with progress(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while chunk := resp.read(DOWNLOAD_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)  # atomic: a killed download never leaves a truncated enwik8.zip
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"could not download enwik8 from dataset.url={url!r}: {exc}\nDownload it by "
                           f"hand and pass dataset.path=/abs/enwik8.zip (or the unzipped enwik8)") from exc
    return dest


def read_enwik8(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            data = zf.read(ENWIK8_MEMBER)
    else:
        data = path.read_bytes()
    if len(data) != ENWIK8_BYTES:
        raise ValueError(f"dataset.path={str(path)!r} holds {len(data):,} bytes, enwik8 has "
                         f"{ENWIK8_BYTES:,}: point dataset.path at the real enwik8 (or enwik8.zip)")
    return data


def enwik8_source(dataset_cfg, cache_dir: Path) -> Path:
    path = config_value(dataset_cfg, "path")
    return _enwik8_local(Path(path).expanduser()) if path is not None else Path(cache_dir) / "enwik8.zip"


def load_enwik8(dataset_cfg, split: str, cache_dir: Path) -> str:
    source = enwik8_source(dataset_cfg, cache_dir)
    if config_value(dataset_cfg, "path") is None and not source.is_file():
        source = _download(config_value(dataset_cfg, "url"), source)
    return decode_cut(split_bytes(read_enwik8(source), split))


# ----------------------------------------------------------------------------- fingerprint (resume)
def data_source(dataset_cfg, cache_dir: Path) -> Optional[Path]:
    """The local file a text dataset reads (None for hub-only or generated data)."""
    return _option(dataset_cfg).source_file(dataset_cfg, cache_dir)


def data_fingerprint(dataset_cfg, cache_dir: Path) -> dict:
    """Content hash of the file behind the dataset (part of the resume key): editing or replacing the
    file behind dataset.path reruns the job. Hub data is named by id (its cached copy is immutable);
    generated data by its config (in the config hash) and code (in the code version)."""
    name = config_value(dataset_cfg, "name")
    if not _option(dataset_cfg).is_text:
        return {"generated": name}
    source = data_source(dataset_cfg, cache_dir)
    if source is None:
        return {"hub": config_value(dataset_cfg, "hub_id"), "config": config_value(dataset_cfg, "hub_config"),
                "split": canonical_split(dataset_cfg)}
    if not source.is_file():
        return {"file": str(source), "missing": True}
    from lsh_bitnet.models.cache import content_hash

    return {"file": str(source.resolve()), "size": source.stat().st_size, "hash": content_hash(source)}


# ----------------------------------------------------------------------------- entry point
def load_text(dataset_cfg, cache_dir: Path) -> str:
    """The split's text as one string, truncated to dataset.max_chars when set."""
    option = _option(dataset_cfg)
    option.check_config(dataset_cfg)
    if not option.is_text:
        from lsh_bitnet.registry import DATASETS
        from lsh_bitnet.tasks.base import dataset_option

        texts = [n for n in DATASETS.names() if dataset_option(n).is_text]
        raise ValueError(f"dataset={option.name!r} has no text to load (its task generates its items): a text "
                         f"dataset is one of {texts}")
    text = option.load_text(dataset_cfg, canonical_split(dataset_cfg), cache_dir)
    max_chars: Optional[int] = config_value(dataset_cfg, "max_chars")
    return text[:max_chars] if max_chars else text
