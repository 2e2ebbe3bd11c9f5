"""Text loaders (wikitext / enwik8 / text_file), token streams with byte attribution, windows."""
import zipfile

import pytest
import torch
from omegaconf import OmegaConf

from conftest import byte_level_bpe

from lsh_bitnet.config import DatasetConfig, Enwik8DatasetConfig, HubTextDatasetConfig
from lsh_bitnet.data import check_dataset_config, load_text, text as T, tokens as K

NON_ASCII = "naïve café, Grüße aus Köln! 日本語のテキスト 😀👍🏽 end.\n"


def wikitext_cfg(**kw):
    return OmegaConf.structured(HubTextDatasetConfig(name="wikitext2", hub_config="wikitext-2-raw-v1", **kw))


def text_file_cfg(**kw):
    return OmegaConf.structured(DatasetConfig(**{"name": "text_file", "split": "all", **kw}))


# ----------------------------------------------------------------------------- text_file
def test_text_file_loads_exactly_and_truncates(tmp_path):
    content = "line one\r\nzwei: Grüße\n" + NON_ASCII
    f = tmp_path / "t.txt"
    f.write_bytes(content.encode())
    assert load_text(text_file_cfg(path=str(f)), tmp_path) == content  # \r\n kept: bytes as on disk
    assert load_text(text_file_cfg(path=str(f), max_chars=5), tmp_path) == "line "


def test_text_file_errors_name_the_key(tmp_path):
    missing = OmegaConf.merge(text_file_cfg(), {"path": "???"})  # the yaml's required marker
    for cfg in (text_file_cfg(), missing, text_file_cfg(path=str(tmp_path / "nope.txt"))):
        with pytest.raises(ValueError, match="dataset.path"):
            check_dataset_config(cfg)
    f = tmp_path / "t.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"dataset.split='test'.*dataset.split=all"):
        check_dataset_config(text_file_cfg(path=str(f), split="test"))
    with pytest.raises(ValueError, match="dataset.max_chars"):
        check_dataset_config(text_file_cfg(path=str(f), max_chars=0))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_text(text_file_cfg(path=str(tmp_path / "latin1.txt")), tmp_path)


# ----------------------------------------------------------------------------- wikitext
@pytest.mark.parametrize("layout", ["raw", "txt", "nested"])
def test_wikitext_local_directory(tmp_path, layout):
    names = {"raw": ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"),
             "txt": ("train.txt", "valid.txt", "test.txt"),
             "nested": ("wikitext-2-raw/wiki.train.raw", "wikitext-2-raw/wiki.valid.raw", "wikitext-2-raw/wiki.test.raw")}
    for name, body in zip(names[layout], ("TRAIN\n", " = Valid = \n", " test ü\n")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    assert load_text(wikitext_cfg(path=str(tmp_path), split="test"), tmp_path) == " test ü\n"
    assert load_text(wikitext_cfg(path=str(tmp_path), split="valid"), tmp_path) == " = Valid = \n"
    assert load_text(wikitext_cfg(path=str(tmp_path), split="validation"), tmp_path) == " = Valid = \n"
    assert load_text(wikitext_cfg(path=str(tmp_path), split="train"), tmp_path) == "TRAIN\n"


def test_wikitext_errors(tmp_path):
    from omegaconf.errors import ValidationError

    with pytest.raises(ValidationError, match=r"'dev', expected one of \[train, validation, valid, test, all\]"):
        check_dataset_config(wikitext_cfg(split="dev"))  # dataset.split is an Enum field: the schema refuses it
    with pytest.raises(ValueError, match="dataset.path"):
        check_dataset_config(wikitext_cfg(path=str(tmp_path / "absent")))
    (tmp_path / "wiki.train.raw").write_text("x")
    with pytest.raises(ValueError, match=r"dataset.path=.*no file for split 'test'"):
        check_dataset_config(wikitext_cfg(path=str(tmp_path), split="test"))


def test_wikitext_hub_unreachable_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"(?s)Couldn't reach.*dataset.path=DIR"):
        load_text(wikitext_cfg(), tmp_path)


def test_wikitext_hub_rows_are_joined_as_given(tmp_path, monkeypatch):
    import datasets

    seen = {}

    def fake(hub_id, hub_config, split):
        seen.update(hub_id=hub_id, hub_config=hub_config, split=split)
        return {"text": ["", " = A = \n", "", " b c\n"]}

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_text(wikitext_cfg(split="valid"), tmp_path) == " = A = \n b c\n"
    assert seen == {"hub_id": "Salesforce/wikitext", "hub_config": "wikitext-2-raw-v1", "split": "validation"}


# ----------------------------------------------------------------------------- enwik8
def test_enwik8_standard_bounds():
    assert T.ENWIK8_BOUNDS == {"train": (0, 90_000_000), "validation": (90_000_000, 95_000_000),
                               "test": (95_000_000, 100_000_000)}
    assert T.ENWIK8_BYTES == 100_000_000


def test_decode_cut_replaces_only_cut_characters():
    whole = "aé€😀z".encode()  # 1 + 2 + 3 + 4 + 1 bytes
    assert T.decode_cut(whole) == "aé€😀z"
    assert T.decode_cut(whole[2:]) == "\ufffd€😀z"  # starts inside é
    assert T.decode_cut(whole[:-3]) == "aé€\ufffd"  # ends inside 😀
    assert T.decode_cut(whole[4:8]) == "\ufffd\ufffd"  # inside € ... inside 😀
    assert T.decode_cut(b"") == ""


SCALED = {"train": (0, 90), "validation": (90, 95), "test": (95, 100)}


def _fake_enwik8(monkeypatch):
    monkeypatch.setattr(T, "ENWIK8_BYTES", 100)
    monkeypatch.setattr(T, "ENWIK8_BOUNDS", SCALED)
    return b"0123456789" * 9 + b"VALID" + b"TEST!"


def test_enwik8_split_sizes_and_local_files(tmp_path, monkeypatch):
    data = _fake_enwik8(monkeypatch)
    assert [len(T.split_bytes(data, s)) for s in ("train", "validation", "test")] == [90, 5, 5]
    raw = tmp_path / "enwik8"
    raw.write_bytes(data)
    cfg = OmegaConf.structured(Enwik8DatasetConfig(path=str(raw), split="valid"))
    assert load_text(cfg, tmp_path) == "VALID"
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as zf:
        zf.writestr("enwik8", data)
    raw.unlink()
    for path in (tmp_path / "enwik8.zip", tmp_path):  # the zip itself, or the directory holding it
        cfg = OmegaConf.structured(Enwik8DatasetConfig(path=str(path), split="test"))
        assert load_text(cfg, tmp_path) == "TEST!"
    (tmp_path / "short").write_bytes(data[:50])
    with pytest.raises(ValueError, match="holds 50 bytes"):
        load_text(OmegaConf.structured(Enwik8DatasetConfig(path=str(tmp_path / "short"))), tmp_path)
    with pytest.raises(ValueError, match="dataset.path"):
        check_dataset_config(OmegaConf.structured(Enwik8DatasetConfig(path=str(tmp_path / "absent"))))


def test_enwik8_downloads_once_into_cache(tmp_path, monkeypatch):
    data = _fake_enwik8(monkeypatch)
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("enwik8", data)
    cache = tmp_path / "cache"
    cfg = OmegaConf.structured(Enwik8DatasetConfig(url=src.as_uri(), split="train", max_chars=12))
    assert load_text(cfg, cache) == "012345678901"
    assert (cache / "enwik8.zip").is_file()
    src.unlink()  # a second load must not fetch again
    assert load_text(cfg, cache) == "012345678901"


# ----------------------------------------------------------------------------- token streams
@pytest.fixture(scope="module")
def byte_bpe():
    return byte_level_bpe(["the quick brown fox jumps over the lazy dog. " * 20, NON_ASCII * 5], vocab_size=400)


def test_attribute_bytes_gaps_and_overlaps():
    text = "a  bé😀"  # bytes: a=1, spaces=1+1, b=1, é=2, 😀=4
    # token 2 starts after a trimmed gap; tokens 3 and 4 share the emoji (byte-level split)
    offsets = [(0, 1), (3, 4), (4, 5), (5, 6), (5, 6)]
    assert K.attribute_bytes(offsets, text).tolist() == [1, 3, 2, 4, 0]


def test_token_stream_bytes_sum_exactly(tmp_path, byte_bpe):
    text = ("plain ascii words here\n" + NON_ASCII) * 3
    stream = K.token_stream(text, byte_bpe, tmp_path, "tiny-bpe")
    assert stream.ids.dtype == torch.long and stream.ids.shape == stream.byte_len.shape
    assert int(stream.byte_len.sum()) == len(text.encode())
    assert stream.ids.tolist() == byte_bpe(text, add_special_tokens=False)["input_ids"]
    # On ASCII, where every token is whole characters, each token owns exactly its own bytes.
    ascii_text = "the quick brown fox jumps over the lazy dog"
    s = K.token_stream(ascii_text, byte_bpe, tmp_path, "tiny-bpe")
    assert s.byte_len.tolist() == [len(byte_bpe.decode([i])) for i in s.ids.tolist()]


def test_chunked_tokenisation_matches_one_call(tmp_path, byte_bpe, monkeypatch):
    lines = [" = Title = \n", " \n", " the lazy dog . \n", "Grüße.\n", "fox jumps\n\n", "😀 end\n"]
    text = "".join(lines[i % len(lines)] for i in range(300))
    monkeypatch.setattr(K, "CHUNK_CHARS", 200)
    chunks = K.split_chunks(text, 200)
    assert len(chunks) > 5 and "".join(chunks) == text
    stream = K._tokenize(text, byte_bpe)
    assert stream.ids.tolist() == byte_bpe(text, add_special_tokens=False)["input_ids"]
    assert int(stream.byte_len.sum()) == len(text.encode())


def test_token_stream_cache(tmp_path, byte_bpe, monkeypatch):
    text = "the quick brown fox\n" * 10
    first = K.token_stream(text, byte_bpe, tmp_path, "tiny-bpe")
    files = list((tmp_path / "tokens").glob("*.pt"))
    assert len(files) == 1
    monkeypatch.setattr(K, "_MEMORY", {})  # a new process: only the disk cache is left

    def no_tokenising(*args):
        raise AssertionError("the cache should have been hit")

    monkeypatch.setattr(K, "_tokenize", no_tokenising)
    again = K.token_stream(text, byte_bpe, tmp_path, "tiny-bpe")
    assert torch.equal(again.ids, first.ids) and torch.equal(again.byte_len, first.byte_len)
    with pytest.raises(AssertionError, match="cache should"):  # another tokenizer id is another key
        K.token_stream(text, byte_bpe, tmp_path, "other-tokenizer")


def test_windows_drop_the_remainder():
    stream = K.TokenStream(torch.arange(10), torch.arange(10) + 100)
    ids, byte_len = K.windows(stream, 3)
    assert ids.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert byte_len.tolist() == [[100, 101, 102], [103, 104, 105], [106, 107, 108]]
    assert K.windows(stream, 11)[0].shape == (0, 11)
    with pytest.raises(ValueError, match="eval.seq_len"):
        K.windows(stream, 0)
