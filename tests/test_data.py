import pytest
import torch
from conftest import write_csv

from peftkit.config import DataConfig
from peftkit.data import DataError, LengthGroupedBatchSampler, label_names, load_raw_splits, read_file


def rows(labels, text="good film"):
    return [{"text": f"{text} {i}", "label": label} for i, label in enumerate(labels)]


def test_string_labels_sorted():
    assert label_names(["pos", "neg", "pos"], None) == ["neg", "pos"]


def test_int_labels_with_names():
    assert label_names([1, 0, 1], ["negative", "positive"]) == ["negative", "positive"]


def test_int_labels_out_of_range_for_names():
    with pytest.raises(DataError, match="label_names has 2 names but the labels are"):
        label_names([0, 1, 2], ["a", "b"])


def test_single_class_is_error():
    with pytest.raises(DataError, match="single class"):
        label_names(["pos", "pos"], None)


def test_missing_column_lists_columns(tmp_path):
    write_csv(tmp_path / "t.csv", [{"sentence": "x", "label": "a"}, {"sentence": "y", "label": "b"}])
    with pytest.raises(DataError, match=r"no column 'text'; its columns are \['sentence', 'label'\]"):
        load_raw_splits(DataConfig(train_file=str(tmp_path / "t.csv")), seed=0)


def test_unseen_validation_labels(tmp_path):
    write_csv(tmp_path / "t.csv", rows(["a", "b"] * 5))
    write_csv(tmp_path / "v.csv", rows(["a", "c", "c"]))
    with pytest.raises(DataError, match=r"validation split has labels never seen in training: \{'c': 2\}"):
        load_raw_splits(
            DataConfig(train_file=str(tmp_path / "t.csv"), validation_file=str(tmp_path / "v.csv")), 0
        )


def test_missing_file():
    with pytest.raises(DataError, match="not found"):
        read_file("/nonexistent/train.csv")


def test_empty_labels_counted(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,\nc,y\n")
    with pytest.raises(DataError, match="1 of 3 rows have an empty 'label'"):
        load_raw_splits(DataConfig(train_file=str(tmp_path / "t.csv")), 0)


def test_validation_carved_with_seed(tmp_path):
    write_csv(tmp_path / "t.csv", rows(["a", "b"] * 50))
    config = DataConfig(train_file=str(tmp_path / "t.csv"), validation_ratio=0.2)
    first = load_raw_splits(config, seed=3)
    second = load_raw_splits(config, seed=3)
    assert len(first.train) == 80 and len(first.validation) == 20
    assert list(first.validation["text"]) == list(second.validation["text"])


def test_tsv_is_read_without_quoting(tmp_path):
    (tmp_path / "t.tsv").write_text('label\tsentence\n0\tsay "hi\n1\tit \'s "great" \n')
    data = read_file(str(tmp_path / "t.tsv"))
    assert list(data["sentence"]) == ['say "hi', 'it \'s "great" ']


def test_bundled_quickstart_data_is_balanced():
    config = DataConfig(
        train_file="bundled:support_tickets/train.csv", test_file="bundled:support_tickets/test.csv"
    )
    raw = load_raw_splits(config, seed=0)
    assert raw.labels == ["account", "billing", "delivery", "technical"]
    assert len(raw.train) + len(raw.validation) == 360 and len(raw.test) == 120


def test_length_grouped_sampler_covers_each_index_once():
    lengths = torch.randint(1, 100, (1000,)).tolist()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=0, mega_batch_factor=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 63
    assert sorted(i for b in batches for i in b) == list(range(1000))

    # grouping: padded tokens far below a random batching of the same data
    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    random_batches = list(LengthGroupedBatchSampler(lengths, 16, seed=0, group_by_length=False))
    assert padding(batches) < 0.35 * padding(random_batches)


def test_length_grouped_sampler_reshuffles_per_epoch():
    sampler = LengthGroupedBatchSampler(list(range(200)), batch_size=8, seed=0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_text_pairs_are_encoded_as_pairs(tmp_path):
    from peftkit.config import ModelConfig
    from peftkit.data import tokenize
    from peftkit.model import load_tokenizer

    pairs = [{"premise": "good film", "hypothesis": "bad film", "label": "no"},
             {"premise": "great", "hypothesis": "great", "label": "yes"}]  # fmt: skip
    write_csv(tmp_path / "t.csv", pairs)
    write_csv(tmp_path / "v.csv", pairs)
    config = DataConfig(train_file=str(tmp_path / "t.csv"), validation_file=str(tmp_path / "v.csv"),
                        text_column="premise", text_pair_column="hypothesis")  # fmt: skip
    raw = load_raw_splits(config, seed=0)
    tokenizer = load_tokenizer(ModelConfig())  # the bundled MiniLM's real BERT tokenizer
    rows = tokenize(raw.train, tokenizer, raw.labels, config)
    sep = tokenizer.sep_token_id
    assert rows[0]["input_ids"].count(sep) == 2  # [CLS] a [SEP] b [SEP]
    assert 1 in rows[0]["token_type_ids"] and rows[0]["labels"] in (0, 1)
