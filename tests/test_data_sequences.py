"""Vocabulary, tokenisation, FASTA / .qza reading, sequences from IDs, and the token cache."""

from __future__ import annotations

import time

import numpy as np
import pytest

import aam_ds.data.cache as cache_module
from aam_ds.data.cache import cached_tokenize
from aam_ds.data.sequences import (
    PAD,
    A,
    C,
    G,
    N,
    T,
    asv_sequences,
    dropped_rows,
    read_fasta,
    tokenize,
)
from aam_ds.data.table import load_table
from aam_ds.errors import AamInputError
from aam_ds.model.vocabulary import MASK, VOCAB_SIZE


def test_vocabulary_matches_contract():
    assert (PAD, A, C, G, T, N, MASK, VOCAB_SIZE) == (0, 1, 2, 3, 4, 5, 6, 7)


def test_tokenize_pads_truncates_and_accepts_lower_case():
    tokens = tokenize(["ACGT", "acgtaACG", "GGGGGGGGGGGG"], max_len=6)
    assert tokens.dtype == np.uint8 and tokens.shape == (3, 6)
    np.testing.assert_array_equal(tokens[0], [A, C, G, T, PAD, PAD])
    np.testing.assert_array_equal(tokens[1], [A, C, G, T, A, A])
    np.testing.assert_array_equal(tokens[2], [G] * 6)


def test_ambiguity_policies():
    seqs = ["ACRYT", "ACGTA", "nacgw"]
    as_n = tokenize(seqs, 5, "as_n")
    np.testing.assert_array_equal(as_n[0], [A, C, N, N, T])
    np.testing.assert_array_equal(as_n[2], [N, A, C, G, N])  # lower-case codes too
    dropped = tokenize(seqs, 5, "drop_asv")
    np.testing.assert_array_equal(dropped_rows(dropped), [True, False, True])
    np.testing.assert_array_equal(dropped[1], as_n[1])
    with pytest.raises(AamInputError):
        tokenize(["ACGN"], 5, "error")  # N is an ambiguity code too


def test_real_sequences_round_trip(shared_data):
    table = load_table(shared_data / "huang_oral_2550/oral_2550.rarefied1000.biom")
    seqs = asv_sequences(table.asv_ids, None, table.source)
    tokens = tokenize(seqs, 150, "error", ids=table.asv_ids)
    assert tokens.shape == (5574, 150)
    assert (tokens[:, :100] != PAD).all() and (tokens[:, 100:] == PAD).all()  # 100-nt deblur reads
    decode = np.array(["", "A", "C", "G", "T", "N"])
    assert ["".join(decode[row[row != PAD]]) for row in tokens[:50]] == table.asv_ids[:50]


def test_md5_ids_need_sequences(shared_data):
    table = load_table(shared_data / "small/moving_pictures.table.biom")
    with pytest.raises(AamInputError, match="data.sequences"):
        asv_sequences(table.asv_ids, None, table.source)


def test_fasta_and_qza_give_sequences_by_id(tmp_path, make_qza):
    fasta = tmp_path / "rep.fasta"
    fasta.write_text(">b description\nACGT\nACGG\n\n>a\nttga\n")
    assert read_fasta(fasta) == {"b": "ACGTACGG", "a": "ttga"}
    qza = make_qza(tmp_path / "rep.qza", "FeatureData[Sequence]", "dna-sequences.fasta", fasta.read_bytes())
    assert asv_sequences(["a", "b"], qza, "t.biom") == ["ttga", "ACGTACGG"]


def test_cache_second_load_is_a_faster_identical_hit(shared_data, tmp_path, monkeypatch):
    table = load_table(shared_data / "huang_oral_2550/oral_2550.rarefied1000.biom")
    seqs = asv_sequences(table.asv_ids, None, table.source) * 4  # 22k sequences, enough to time
    start = time.perf_counter()
    first = cached_tokenize(seqs, 150, "error", tmp_path)
    miss_s = time.perf_counter() - start

    def tokenizer_must_not_run(*args, **kwargs):
        raise AssertionError("tokenize called on a cache hit")

    monkeypatch.setattr(cache_module, "tokenize", tokenizer_must_not_run)
    start = time.perf_counter()
    second = cached_tokenize(seqs, 150, "error", tmp_path)
    hit_s = time.perf_counter() - start
    assert not first.hit and second.hit and first.path == second.path
    np.testing.assert_array_equal(first.tokens, second.tokens)
    assert hit_s < miss_s
    assert not list(tmp_path.rglob("*.tmp"))  # atomic write left no temporary file


def test_cache_key_covers_inputs_and_survives_corruption(tmp_path):
    seqs = ["ACGTR", "TTGCA"]
    base = cached_tokenize(seqs, 8, "as_n", tmp_path)
    for other in (
        cached_tokenize(seqs, 9, "as_n", tmp_path),
        cached_tokenize(seqs, 8, "drop_asv", tmp_path),
        cached_tokenize(seqs[::-1], 8, "as_n", tmp_path),
    ):
        assert not other.hit and other.path != base.path
    base.path.write_bytes(b"not an npy file")
    rebuilt = cached_tokenize(seqs, 8, "as_n", tmp_path)
    assert not rebuilt.hit
    np.testing.assert_array_equal(rebuilt.tokens, base.tokens)
    assert cached_tokenize(seqs, 8, "as_n", tmp_path).hit
