"""QIIME 2 metadata: ID headers, #q2:types, comments, missing cells, alignment, targets."""

from __future__ import annotations

import numpy as np
import pytest

from aam_ds.data.metadata import align_metadata, categorical_codes, is_numeric_column, load_metadata, numeric_targets
from aam_ds.data.table import load_table
from aam_ds.errors import AamInputError

ID_HEADERS = [
    "id",
    "ID",
    "sampleid",
    "sample id",
    "Sample-ID",
    "featureid",
    "feature id",
    "feature-id",
    "#SampleID",
    "#Sample ID",
    "#OTUID",
    "#OTU ID",
    "sample_name",
]


@pytest.mark.parametrize("header", ID_HEADERS)
def test_every_qiime2_id_header_is_accepted(tmp_path, header):
    path = tmp_path / "m.tsv"
    path.write_text(f"# a leading comment\n{header}\tx\n007\t1\n")
    frame = load_metadata(path)
    assert list(frame.index) == ["007"]  # IDs stay strings: no number parsing, no lost zeros


def test_types_comments_and_missing_cells(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text(
        "sample-id\tcode\tage\tsite\tnote\n"
        "#q2:types\tcategorical\tnumeric\tcategorical\t\n"
        "# a comment between rows\n"
        "10317.000003639\t1\t30.5\tgut\t\n"
        "\n"
        'S2\t2\t\t"oral, upper"\tx\n'
    )
    frame = load_metadata(path)
    assert list(frame.index) == ["10317.000003639", "S2"]
    assert frame["code"].tolist() == ["1", "2"]  # declared categorical although numeric-looking
    assert frame["age"].dtype == np.float64 and np.isnan(frame.loc["S2", "age"])
    assert frame.loc["S2", "site"] == "oral, upper"
    assert frame["note"].isna().tolist() == [True, False]
    assert frame.attrs["source"] == str(path)


def test_undeclared_columns_keep_their_text_and_are_numbers_only_as_targets(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("id\tn\tc\n a \t1e3\tyes\nb\t-2\t3\n")
    frame = load_metadata(path)
    assert frame["n"].tolist() == ["1e3", "-2"] and frame["c"].tolist() == ["yes", "3"]  # as written (issue 10)
    assert is_numeric_column(frame["n"]) and not is_numeric_column(frame["c"])
    assert numeric_targets(frame, ["n"]).ravel().tolist() == [1000.0, -2.0]
    assert list(frame.index) == ["a", "b"]  # whitespace stripped


REAL = {
    "huang": ("huang_oral_2550/oral_2550.rarefied1000.biom", "huang_oral_2550/oral_2550_map.txt", 2537),
    "cfs": ("cfs/table.biom", "cfs/metadata.tsv", 87),
    "moving_pictures": ("small/moving_pictures.table.biom", "small/moving_pictures.sample-metadata.tsv", 34),
    "crawford": ("small/crawford.biom", "small/crawford.group.tsv", 9),
}


@pytest.mark.parametrize("name", REAL)
def test_real_metadata_aligns_to_table(shared_data, name):
    table_rel, meta_rel, n = REAL[name]
    table = load_table(shared_data / table_rel)
    aligned = align_metadata(load_metadata(shared_data / meta_rel), table.sample_ids, table.source)
    assert list(aligned.index) == table.sample_ids and len(aligned) == n


def test_real_targets(shared_data):
    meta = load_metadata(shared_data / "huang_oral_2550/oral_2550_map.txt")
    age = numeric_targets(meta, ["age"])
    assert age.dtype == np.float32 and age.shape == (2537, 1)
    assert 18 <= age.min() and age.max() <= 85  # README: 18-85 years
    mp = load_metadata(shared_data / "small/moving_pictures.sample-metadata.tsv")
    codes, classes = categorical_codes(mp, "BodySite", "data.targets")
    assert classes == ["gut", "left palm", "right palm", "tongue"]
    assert [classes[c] for c in codes] == mp["BodySite"].tolist()


def test_ecam_has_two_samples_without_metadata(shared_data):
    table = load_table(shared_data / "ecam/table.biom")
    meta = load_metadata(shared_data / "ecam/metadata.tsv")
    with pytest.raises(AamInputError, match="2 of the 743"):
        align_metadata(meta, table.sample_ids, table.source)
    with pytest.warns(UserWarning, match="dropping 2"):
        kept = align_metadata(meta, table.sample_ids, table.source, drop_missing=True)
    assert len(kept) == 741 and list(kept.index) == [s for s in table.sample_ids if s in set(meta.index)]


def test_covariate_missing_values_become_a_class(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("id\tdiet\na\tbd\nb\t\nc\tfd\n")
    codes, classes = categorical_codes(load_metadata(path), "diet", "data.covariates", allow_missing=True)
    assert classes == ["<missing>", "bd", "fd"] and codes.tolist() == [1, 0, 2]
