"""Tasks: the synthetic grammar (gnorm_kernels.data.synthetic), its tokenizer, batching, local files and the GLUE mapping."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch

import gnorm_kernels.data as data
from gnorm_kernels.data import synthetic
from gnorm_kernels.data.loading import load_task, task_from_glue
from gnorm_kernels.data.synthetic import synthetic_task, synthetic_tokenizer
from gnorm_kernels.data.tasks import Example, Task


@pytest.fixture(scope="module")
def small() -> Task:
    return synthetic_task(seed=3, train_size=4000, calibration_size=200, test_size=1000)


# --------------------------------------------------------------------------- synthetic task


def reference_label(text: str) -> int:
    """Label a review from its words alone, independently of the generator.

    Segments split on "but", clauses on "and"; a clause is about the film when its
    noun is a film noun; its polarity is the adjective's, flipped by a negator.
    """
    label = None
    for segment in text.replace(",", " ").split(" but "):
        for clause in segment.split(" and "):
            words = clause.split()
            if not any(w in synthetic.FILM_NOUNS for w in words):
                continue
            positive = any(w in synthetic.POSITIVE for w in words)
            negated = any(w in synthetic.NEGATORS for w in words)
            label = int(positive != negated)
    assert label is not None, f"no clause about the film in {text!r}"
    return label


def test_synthetic_labels_follow_the_grammar(small: Task) -> None:
    for split in data.SPLITS:
        for ex in small.splits[split]:
            assert ex.label == reference_label(ex.text), ex.text


def test_synthetic_splits_are_disjoint_and_sized(small: Task) -> None:
    texts = {s: [ex.text for ex in small.splits[s]] for s in data.SPLITS}
    assert {s: len(t) for s, t in texts.items()} == {"train": 4000, "calibration": 200, "test": 1000}
    for s, t in texts.items():
        assert len(set(t)) == len(t), f"duplicates inside {s}"
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["train"]) & set(texts["calibration"])
    assert not set(texts["calibration"]) & set(texts["test"])


def test_synthetic_is_deterministic_by_seed() -> None:
    a = synthetic_task(seed=5, train_size=300, calibration_size=20, test_size=50)
    b = synthetic_task(seed=5, train_size=300, calibration_size=20, test_size=50)
    c = synthetic_task(seed=6, train_size=300, calibration_size=20, test_size=50)
    assert a.splits == b.splits
    assert a.splits["test"] != c.splits["test"]


def test_synthetic_labels_are_balanced_and_sentences_short(small: Task) -> None:
    tokenizer = synthetic_tokenizer()
    for split in data.SPLITS:
        share = sum(ex.label for ex in small.splits[split]) / len(small.splits[split])
        assert 0.43 < share < 0.57, (split, share)
    lengths = [len(ids) for ids in tokenizer([ex.text for ex in small.splits["test"]])["input_ids"]]
    assert max(lengths) <= 40
    assert 90 <= len(synthetic.synthetic_vocabulary()) <= 110


def test_synthetic_has_contrast_and_negation(small: Task) -> None:
    texts = [ex.text for ex in small.splits["train"]]
    share = lambda cond: sum(map(cond, texts)) / len(texts)  # noqa: E731
    assert share(lambda t: " but " in t) > 0.6
    assert share(lambda t: any(f" {n} " in t for n in synthetic.NEGATORS)) > 0.4
    # a segment about something other than the film after the last film segment
    assert share(lambda t: not any(n in t.split(" but ")[-1].split() for n in synthetic.FILM_NOUNS)) > 0.15


def test_bag_of_words_cannot_solve_the_task(small: Task) -> None:
    """Word counts alone (a logistic regression) stay far below the tiny model's ~99%:
    the label depends on negation scope, the subject of each clause, and order."""
    tokenizer = synthetic_tokenizer()
    vocab = len(tokenizer)

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer([ex.text for ex in small.splits[split]])["input_ids"]
        x = torch.zeros(len(ids), vocab)
        for row, seq in enumerate(ids):
            x[row].index_add_(0, torch.tensor(seq), torch.ones(len(seq)))
        return x, torch.tensor([ex.label for ex in small.splits[split]])

    x, y = features("train")
    xt, yt = features("test")
    torch.manual_seed(0)
    linear = torch.nn.Linear(vocab, 2)
    opt = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(linear(x), y).backward()
        opt.step()
    train_acc = (linear(x).argmax(-1) == y).float().mean().item()
    test_acc = (linear(xt).argmax(-1) == yt).float().mean().item()
    assert train_acc < 0.75 and test_acc < 0.75, (train_acc, test_acc)


def test_the_synthetic_names_stay_importable_from_data() -> None:
    from gnorm_kernels.data.synthetic import synthetic_fingerprint, synthetic_review, word_level_tokenizer  # noqa: F401

    for name in synthetic.__all__:
        assert getattr(data, name) is getattr(synthetic, name), name
        assert name in dir(data)
    assert set(data.__all__) - set(dir(data)) == set()
    with pytest.raises(AttributeError, match="no attribute 'FILM_NOUN'"):
        data.FILM_NOUN
    task = load_task("synthetic", train_size=50, calibration_size=10, test_size=20)
    assert task.splits == synthetic_task(train_size=50, calibration_size=10, test_size=20).splits


# --------------------------------------------------------------------------- tokenizer and batches


def test_tokenizer_is_bert_style_and_round_trips(tmp_path) -> None:
    from transformers import AutoTokenizer

    tokenizer = synthetic_tokenizer()
    enc = tokenizer("The plot was NOT good", "the popcorn was bad")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "the", "plot", "was", "not", "good", "[SEP]", "the", "popcorn", "was", "bad", "[SEP]"]
    assert enc["token_type_ids"] == [0] * 7 + [1] * 5
    assert tokenizer.convert_ids_to_tokens(tokenizer("the zebra")["input_ids"]) == ["[CLS]", "the", "[UNK]", "[SEP]"]
    assert tokenizer.pad_token_id == 0 and tokenizer.mask_token == "[MASK]"

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    sentences = ["honestly, the film was not very good but the popcorn was great", "the cast is superb"]
    assert loaded(sentences)["input_ids"] == tokenizer(sentences)["input_ids"]
    assert loaded.get_vocab() == tokenizer.get_vocab()


def test_synthetic_words_are_all_in_vocabulary(small: Task) -> None:
    tokenizer = synthetic_tokenizer()
    ids = tokenizer([ex.text for ex in small.splits["test"]])["input_ids"]
    assert all(tokenizer.unk_token_id not in seq for seq in ids)


def test_batches_pad_per_batch_and_carry_labels(small: Task) -> None:
    tokenizer = synthetic_tokenizer()
    batches = small.batches("test", tokenizer, batch_size=64, limit=200)
    assert [len(b["labels"]) for b in batches] == [64, 64, 64, 8]
    first = batches[0]
    assert set(first) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert first["input_ids"].dtype == torch.long
    assert first["attention_mask"].sum(1).max() == first["input_ids"].shape[1]  # no wasted column
    assert torch.equal(first["input_ids"] == tokenizer.pad_token_id, first["attention_mask"] == 0)
    assert first["labels"].tolist() == [ex.label for ex in small.splits["test"][:64]]


def test_grouped_batches_cover_every_example_once(small: Task) -> None:
    tokenizer = synthetic_tokenizer()
    plain = small.batches("calibration", tokenizer, batch_size=16)
    grouped = small.batches("calibration", tokenizer, batch_size=16, group_by_length=True, seed=1)
    twice = small.batches("calibration", tokenizer, batch_size=16, group_by_length=True, shuffle=True, epochs=2)

    def rows(batches):
        return Counter(
            tuple(ids[mask.bool()].tolist()) + (int(y),)
            for b in batches
            for ids, mask, y in zip(b["input_ids"], b["attention_mask"], b["labels"])
        )

    assert rows(grouped) == rows(plain)
    assert rows(twice) == Counter({k: 2 * v for k, v in rows(plain).items()})
    padding = lambda bs: sum(int((b["attention_mask"] == 0).sum()) for b in bs)  # noqa: E731
    assert padding(grouped) < padding(plain) / 2


def test_batches_reject_unknown_split(small: Task) -> None:
    with pytest.raises(KeyError, match="validation"):
        small.batches("validation", synthetic_tokenizer())


# --------------------------------------------------------------------------- local files


def write_rows(path, rows: list[dict]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_local_file_single_text(tmp_path, suffix: str) -> None:
    rows = [{"text": f"review number {i}", "label": "pos" if i % 3 else "neg", "extra": i} for i in range(100)]
    path = tmp_path / f"reviews{suffix}"
    write_rows(path, rows)
    task = load_task(path, seed=1)
    assert task.label_names == ["neg", "pos"]
    assert task.metric == "accuracy"
    sizes = {s: len(task.splits[s]) for s in data.SPLITS}
    assert sizes == {"test": 20, "calibration": 10, "train": 70}
    seen = [ex.text for s in data.SPLITS for ex in task.splits[s]]
    assert sorted(seen) == sorted(r["text"] for r in rows)  # disjoint and complete
    by_text = {r["text"]: r["label"] for r in rows}
    for ex in task.splits["train"]:
        assert ex.text_pair is None
        assert task.label_names[ex.label] == by_text[ex.text]
    again = load_task(path, seed=1)
    other = load_task(path, seed=2)
    assert again.splits == task.splits
    assert other.splits["test"] != task.splits["test"]


@pytest.mark.parametrize(
    "columns", [("sentence1", "sentence2"), ("question", "sentence"), ("text_a", "text_b")]
)
def test_local_file_text_pairs(tmp_path, columns: tuple[str, str]) -> None:
    a, b = columns
    rows = [{a: f"first {i}", b: f"second {i}", "label": i % 2} for i in range(30)]
    path = tmp_path / "pairs.jsonl"
    write_rows(path, rows)
    task = load_task(path)
    assert task.label_names == ["0", "1"]
    ex = task.splits["train"][0]
    i = int(ex.text.split()[1])
    assert ex.text_pair == f"second {i}" and ex.label == i % 2
    batch = task.batches("train", synthetic_tokenizer(), batch_size=4)[0]
    assert batch["token_type_ids"].max() == 1


def test_local_file_duplicates_do_not_leak_across_splits(tmp_path) -> None:
    rows = [{"sentence": f"s{i % 20}", "label": i % 2} for i in range(60)]
    path = tmp_path / "dupes.csv"
    write_rows(path, rows)
    task = load_task(path)
    texts = [ex.text for s in data.SPLITS for ex in task.splits[s]]
    assert len(texts) == len(set(texts)) == 20


def test_local_file_errors(tmp_path) -> None:
    no_label = tmp_path / "nolabel.csv"
    write_rows(no_label, [{"text": "a", "target": 1}] * 5)
    with pytest.raises(ValueError, match=r"label.*\['text', 'target'\]"):
        load_task(no_label)
    no_text = tmp_path / "notext.csv"
    write_rows(no_text, [{"body": f"a{i}", "label": 1} for i in range(5)])
    with pytest.raises(ValueError, match="no text column"):
        load_task(no_text)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_task(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match="at least 3"):
        load_task(header_only)
    odd = tmp_path / "reviews.parquet"
    odd.write_text("x")
    with pytest.raises(ValueError, match=r"\.parquet"):
        load_task(odd)
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "missing.csv")


def test_unknown_task_names_list_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match="synthetic.*glue/<task>.*csv"):
        load_task("imdb")
    with pytest.raises(ValueError, match="sst2"):
        load_task("glue/sst3")


# --------------------------------------------------------------------------- GLUE mapping


def fake_glue(columns: tuple[str, ...], names: list[str], test_split: str = "validation"):
    import datasets

    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in columns},
            "label": datasets.ClassLabel(names=names),
            "idx": datasets.Value("int32"),
        }
    )

    def split(prefix: str, n: int, labels=None):
        rows = {c: [f"{prefix} {c} {i}" for i in range(n)] for c in columns}
        rows["label"] = labels if labels is not None else [i % len(names) for i in range(n)]
        rows["idx"] = list(range(n))
        return datasets.Dataset.from_dict(rows, features=features)

    return datasets.DatasetDict(
        {"train": split("train", 120), test_split: split("dev", 40), "test": split("test", 30, [-1] * 30)}
    )


def test_glue_validation_becomes_test_and_calibration_comes_from_train(monkeypatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return fake_glue(("sentence1", "sentence2"), ["not_equivalent", "equivalent"])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task("glue/mrpc", seed=0, calibration_size=10)
    assert calls == [("glue", "mrpc")]
    assert task.name == "glue/mrpc" and task.metric == "f1"
    assert task.label_names == ["not_equivalent", "equivalent"]
    assert len(task.splits["test"]) == 40 and all(ex.text.startswith("dev") for ex in task.splits["test"])
    assert len(task.splits["calibration"]) == 10 and len(task.splits["train"]) == 110
    train_texts = {ex.text for ex in task.splits["train"]}
    assert not train_texts & {ex.text for ex in task.splits["calibration"]}
    ex = task.splits["test"][3]
    assert (ex.text, ex.text_pair, ex.label) == ("dev sentence1 3", "dev sentence2 3", 1)


def test_glue_mnli_and_cola_mapping() -> None:
    mnli = task_from_glue(
        "mnli", fake_glue(("premise", "hypothesis"), ["entailment", "neutral", "contradiction"], "validation_matched")
    )
    assert mnli.num_labels == 3 and mnli.metric == "accuracy"
    assert mnli.splits["test"][0].text_pair == "dev hypothesis 0"
    cola = task_from_glue("cola", fake_glue(("sentence",), ["unacceptable", "acceptable"]))
    assert cola.metric == "matthews" and cola.splits["train"][0].text_pair is None
    with pytest.raises(ValueError, match="validation_matched"):
        task_from_glue("mnli", fake_glue(("premise", "hypothesis"), ["e", "n", "c"]))
    with pytest.raises(ValueError, match="sentence"):
        task_from_glue("sst2", fake_glue(("text",), ["negative", "positive"]))


def test_task_rejects_missing_splits_and_unknown_metric() -> None:
    ex = [Example("a", None, 0)]
    with pytest.raises(ValueError, match="calibration"):
        Task("t", ["a"], {"train": ex, "test": ex})
    with pytest.raises(ValueError, match="metric"):
        Task("t", ["a"], {"train": ex, "calibration": ex, "test": ex}, metric="bleu")


# --------------------------------------------------------------------------- reading files as written


def test_labels_map_through_the_model_names_and_a_mismatch_lists_both(tmp_path) -> None:
    rows = [{"text": f"review {i}", "label": "positive" if i % 3 else "negative"} for i in range(30)]
    path = tmp_path / "named.csv"
    write_rows(path, rows)
    model_order = {"positive": 0, "negative": 1}  # not the sorted order
    task = load_task(path, label2id=model_order)
    assert task.label_names == ["positive", "negative"]
    by_text = {r["text"]: r["label"] for r in rows}
    assert all(task.label_names[ex.label] == by_text[ex.text] for s in data.SPLITS for ex in task.splits[s])
    assert load_task(path, label2id={"NEGATIVE": 0, "POSITIVE": 1}).label_names == ["NEGATIVE", "POSITIVE"]
    with pytest.raises(ValueError, match=r"'negative', 'positive'.*'bad', 'good'"):
        load_task(path, label2id={"bad": 0, "good": 1})
    with pytest.raises(ValueError, match="placeholders and fewer"):
        load_task(path, label2id={"LABEL_0": 0})
    # placeholder names (LABEL_0, LABEL_1) carry no meaning: the sorted order stays
    assert load_task(path, label2id={"LABEL_0": 0, "LABEL_1": 1}).label_names == ["negative", "positive"]


def test_class_ids_must_be_the_model_classes_and_never_mix_with_names(tmp_path) -> None:
    far = tmp_path / "far.csv"
    write_rows(far, [{"text": f"t{i}", "label": 1000 if i % 2 else 0} for i in range(20)])
    assert load_task(far).num_labels == 1001  # without a model the ids are taken as given
    with pytest.raises(ValueError, match=r"class ids \[1000\] outside the model's 2 classes"):
        load_task(far, label2id={"LABEL_0": 0, "LABEL_1": 1})
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)) + "t10,pos\n")
    with pytest.raises(ValueError, match=r"mix class ids and class names \('0' on line 2, 'pos' on line 12\)"):
        load_task(mixed)
    floats = tmp_path / "floats.csv"  # how pandas writes an integer column with gaps
    floats.write_text("text,label\n" + "".join(f"t{i},{float(i % 2)}\n" for i in range(10)))
    assert load_task(floats).label_names == ["0", "1"]
    assert load_task(floats, label2id={"no": 0, "yes": 1}).label_names == ["no", "yes"]


def test_fields_are_read_as_written(tmp_path) -> None:
    path = tmp_path / "numbers.csv"
    path.write_text('text,label\n1.50,a\n2,b\nNA,a\nNone,b\nnan,a\n"",b\n"a, ""quoted""\nline",a\n\n007,b\n')
    with pytest.warns(data.DataWarning, match=r"skipped 1 rows without text or label \(lines 7\)"):
        task = load_task(path)
    texts = sorted(ex.text for s in data.SPLITS for ex in task.splits[s])
    assert texts == sorted(["1.50", "2", "NA", "None", "nan", 'a, "quoted"\nline', "007"])
    jsonl = tmp_path / "numbers.jsonl"
    jsonl.write_text('{"text": "1.50", "label": 0}\n\n{"text": 2.5, "label": 1}\n{"text": "None", "label": 1}\n')
    assert sorted(ex.text for s in data.SPLITS for ex in load_task(jsonl).splits[s]) == ["1.50", "2.5", "None"]


def test_one_text_with_two_labels_is_reported_with_the_count(tmp_path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)] + [{"text": "t1", "label": 0}, {"text": "t3", "label": 0},
                                                                   {"text": "t5", "label": 1}]
    path = tmp_path / "conflicts.csv"
    write_rows(path, rows)
    with pytest.warns(data.DataWarning, match=r"2 rows repeat an earlier text with another label \(first: 't1' on lines 3 and 12\)"):
        task = load_task(path)
    assert task.info["conflicting_repeats"] == 2
    labels = {ex.text: ex.label for s in data.SPLITS for ex in task.splits[s]}
    assert len(labels) == 10 and labels["t1"] == 1  # the first label stays


BROKEN_FILES = [  # (file name, its bytes, the error it must give)
    ("latin.csv", "text,label\ngood,1\ncaf\u00e9,0\nfine,1\n".encode("latin-1"),
     r"latin\.csv, line 3: not UTF-8 text \(byte 0xe9 at column 4\)"),
    ("wide.tsv", "text\tlabel\na\t1\n".encode("utf-16"), r"wide\.tsv, line 1: not UTF-8"),
    ("broken.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n\n{"text": "c", "label": \n',
     r"broken\.jsonl, line 4: not valid JSON"),
    ("missing_key.jsonl", b'{"text": "a", "label": 1}\n{"text": "b"}\n{"text": "c", "label": 0}\n',
     r"missing_key\.jsonl, line 2: no \['label'\] field"),
    ("ragged.csv", b'text,label\n"two\nlines",1\nb,0\nc,1,extra\nd,0\n',
     r"ragged\.csv, line 5: 3 fields, but the header has 2"),
    ("short.tsv", b"text\tlabel\na\t1\nb\nc\t0\n", r"short\.tsv, line 3: 1 fields"),
]


def test_broken_files_are_errors_naming_the_file_and_line(tmp_path) -> None:
    for name, content, error in BROKEN_FILES:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=error):
            load_task(path)
    folder = tmp_path / "x.csv"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"x\.csv is a directory"):
        load_task(folder)


# --------------------------------------------------------------------------- two files: calibrate on one, evaluate on the other


def glue_style_files(tmp_path, *, train: int = 300, dev: int = 520):
    """GLUE SST-2-style train.tsv and dev.tsv (sentence, label) of synthetic reviews; dev has a
    repeated row and shares two sentences with train."""
    task = synthetic_task(seed=7, train_size=train, calibration_size=1, test_size=dev - 1)
    names = ["negative", "positive"]
    train_rows = [{"sentence": ex.text, "label": names[ex.label]} for ex in task.splits["train"]]
    dev_rows = [{"sentence": ex.text, "label": names[ex.label]} for ex in task.splits["test"]]
    dev_rows += [dev_rows[0]]  # a duplicate: still evaluated
    train_rows[:2] = dev_rows[1:3]  # in both files: never used for calibration
    write_rows(tmp_path / "train.tsv", train_rows)
    write_rows(tmp_path / "dev.tsv", dev_rows)
    return tmp_path / "train.tsv", tmp_path / "dev.tsv", train_rows, dev_rows


def test_two_files_calibrate_on_the_first_and_evaluate_on_every_row_of_the_second(tmp_path) -> None:
    train, dev, train_rows, dev_rows = glue_style_files(tmp_path)
    task = load_task(train, eval_file=dev, calibration_size=100, seed=3)
    assert task.label_names == ["negative", "positive"]
    assert [(ex.text, task.label_names[ex.label]) for ex in task.splits["test"]] == \
        [(r["sentence"], r["label"]) for r in dev_rows]
    calibration = [ex.text for ex in task.splits["calibration"]]
    assert len(calibration) == 100 and len(task.splits["train"]) == len(train_rows) - 2 - 100
    assert not set(calibration) & {r["sentence"] for r in dev_rows}
    assert task.info["overlap_left_out"] == 2
    rest = [ex.text for ex in task.splits["train"]]
    assert sorted(calibration + rest) == sorted(r["sentence"] for r in train_rows[2:])
    assert load_task(train, eval_file=dev, calibration_size=100, seed=3).splits == task.splits
    reseeded = load_task(train, eval_file=dev, calibration_size=100, seed=4)
    assert reseeded.splits["calibration"] != task.splits["calibration"]
    assert data.task_from_files(train, dev, calibration_size=100, seed=3).splits == task.splits


def test_two_files_share_label_ids_and_check_their_columns(tmp_path) -> None:
    write_rows(tmp_path / "a.csv", [{"text": f"a {i}", "label": "pos" if i % 2 else "neg"} for i in range(10)])
    write_rows(tmp_path / "b.csv", [{"text": f"b {i}", "label": "pos"} for i in range(4)])
    task = load_task(tmp_path / "a.csv", eval_file=tmp_path / "b.csv")
    assert task.label_names == ["neg", "pos"] and {ex.label for ex in task.splits["test"]} == {1}
    write_rows(tmp_path / "pairs.csv", [{"sentence1": "x", "sentence2": "y", "label": 0}])
    with pytest.raises(ValueError, match="text columns"):
        load_task(tmp_path / "pairs.csv", eval_file=tmp_path / "b.csv")
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "a.csv", eval_file=tmp_path / "missing.csv")


def test_gnorm_evaluates_on_every_row_of_eval_data(model_dir, tmp_path, capsys) -> None:
    from gnorm_kernels.cli.commands import main
    from gnorm_kernels.engine.trajectory import Trajectory

    train, dev, _, dev_rows = glue_style_files(tmp_path)
    out = tmp_path / "cmp"
    # compare's default --eval-size (500) does not cap --eval-data: all 520 rows are evaluated
    assert main(["compare", "--model", model_dir, "--calib-data", str(train), "--eval-data", str(dev),
                 "--calib-size", "40", "--methods", "random", "--random-seeds", "1", "--steps", "1",
                 "--resamples", "50", "--quiet", "--out", str(out)]) == 0
    t = Trajectory.load(out / "trajectories" / "random-seed0.json")
    assert t.settings["evaluation_examples"] == len(dev_rows) == 520
    assert t.settings["calibration_examples"] == 40 and str(dev) in t.settings["task"]
    labels = {"negative": 0, "positive": 1}
    # evaluated in batches of similar length, so in another order: the same labels, each row once
    assert Counter(t.steps[0].golds) == Counter(labels[r["label"]] for r in dev_rows)
    assert "on 520 evaluation examples" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["prune", "--model", model_dir, "--calib-data", str(train), "--out", str(tmp_path / "x")])
    assert err.value.code == 2 and "go together" in capsys.readouterr().err


# --------------------------------------------------------------------------- one reader of labels for one file and for two

# how class k of the task (0: negative, 1: positive) is written in the file
LABEL_LAYOUTS = {
    "ids as ints": lambda k: k,
    "ids as strings": lambda k: str(k),
    "ids as floats": lambda k: float(k),  # 1.0 in the .jsonl file
    "ids as float strings": lambda k: f"{k}.0",  # how pandas writes an integer column with gaps
    "ids past the model": lambda k: k + 1,
    "names": lambda k: ("negative", "positive")[k],
    "names in another case": lambda k: ("NEGATIVE", "Positive")[k],
    "placeholders": lambda k: f"LABEL_{k}",
}
MODEL_CLASSES = {
    "named": {"negative": 0, "positive": 1},
    "named, other order": {"positive": 0, "negative": 1},
    "placeholders": {"LABEL_0": 0, "LABEL_1": 1},
}
MISMATCH = r"has the classes 'LABEL_0', 'LABEL_1', but they do not match the model's classes"
# (layout, model) -> the model's class name for the task's classes 0 and 1, or the error; unlisted: (names 0, 1)
EXPECTED_FIT = {
    ("ids past the model", "named"): r"class ids \[2\] outside the model's 2 classes",
    ("ids past the model", "named, other order"): r"class ids \[2\] outside the model's 2 classes",
    ("ids past the model", "placeholders"): r"class ids \[2\] outside the model's 2 classes",
    ("placeholders", "named"): MISMATCH,
    ("placeholders", "named, other order"): MISMATCH,
}


def _fit_outcome(load, label2id: dict) -> tuple[str, object]:
    """("map", {text: model class name}) of a fitted task, or ("error", its message without the task's name)."""
    from gnorm_kernels.data.labels import fit_labels

    try:
        task = load()
        fitted = fit_labels(task, label2id)
        direct = load(label2id=label2id)  # the loaders' own label2id gives the same task
    except ValueError as err:
        return "error", str(err).replace(f"task {task.name!r}", "task <name>")
    assert direct.splits == fitted.splits and direct.label_names == fitted.label_names
    return "map", {ex.text: fitted.label_names[ex.label] for split in fitted.splits.values() for ex in split}


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
@pytest.mark.parametrize("model", list(MODEL_CLASSES))
@pytest.mark.parametrize("layout", list(LABEL_LAYOUTS))
def test_one_file_and_two_files_read_labels_alike(tmp_path, layout: str, model: str, suffix: str) -> None:
    """The same label column gives the same mapping to a model's classes, or the same error, whether
    the rows come in one file (--task) or in two (--calib-data, --eval-data)."""
    write = LABEL_LAYOUTS[layout]
    rows = [{"text": f"review {i}", "label": write(i % 2)} for i in range(40)]
    write_rows(tmp_path / f"all{suffix}", rows)
    write_rows(tmp_path / f"calib{suffix}", rows[:24])
    write_rows(tmp_path / f"eval{suffix}", rows[24:])
    label2id = MODEL_CLASSES[model]
    one = _fit_outcome(lambda **kw: data.task_from_file(tmp_path / f"all{suffix}", **kw), label2id)
    two = _fit_outcome(lambda **kw: load_task(tmp_path / f"calib{suffix}", eval_file=tmp_path / f"eval{suffix}",
                                              calibration_size=8, **kw), label2id)
    assert one == two
    expected = EXPECTED_FIT.get((layout, model))
    if expected is not None:
        assert one[0] == "error" and re.search(expected, one[1]), one
        return
    if layout.startswith("ids"):  # class ids are the model's ids
        names = sorted(label2id, key=label2id.get)
    elif model != "placeholders":  # names map by name, whatever their case
        names = ("negative", "positive")
    else:  # names against placeholder classes keep the task's sorted order
        names = (write(0), write(1))
    assert one == ("map", {r["text"]: names[int(r["text"].split()[1]) % 2] for r in rows})


def test_the_two_file_task_records_what_its_label_column_holds(tmp_path) -> None:
    write_rows(tmp_path / "a.tsv", [{"sentence": f"a {i}", "label": i % 2} for i in range(10)])
    write_rows(tmp_path / "b.tsv", [{"sentence": f"b {i}", "label": i % 2} for i in range(6)])
    assert load_task(tmp_path / "a.tsv", eval_file=tmp_path / "b.tsv").info["label_kind"] == "ids"
    assert load_task(tmp_path / "a.tsv").info["label_kind"] == "ids"


def test_gnorm_runs_on_class_id_files_with_a_model_of_named_classes(model_dir, tmp_path, capsys) -> None:
    """GLUE's layout (sentence, label 0/1) against a model whose classes are named: --task and
    --calib-data/--eval-data both read the column as class ids."""
    import shutil

    from gnorm_kernels.cli.commands import main

    named = tmp_path / "named"
    shutil.copytree(model_dir, named)
    config = json.loads((named / "config.json").read_text())
    config.update(id2label={"0": "negative", "1": "positive"}, label2id={"negative": 0, "positive": 1})
    (named / "config.json").write_text(json.dumps(config))
    task = synthetic_task(seed=5, train_size=1, calibration_size=60, test_size=80)
    for split, file in (("calibration", "calib.tsv"), ("test", "eval.tsv")):
        write_rows(tmp_path / file, [{"sentence": ex.text, "label": ex.label} for ex in task.splits[split]])
    common = ["--model", str(named), "--calib-size", "16", "--quiet"]
    assert main(["prune", *common, "--task", str(tmp_path / "eval.tsv"), "--steps", "1",
                 "--out", str(tmp_path / "single")]) == 0
    assert main(["prune", *common, "--calib-data", str(tmp_path / "calib.tsv"), "--eval-data",
                 str(tmp_path / "eval.tsv"), "--steps", "2", "--out", str(tmp_path / "split")]) == 0
    assert "error" not in capsys.readouterr().err
    assert (tmp_path / "single").is_dir() and (tmp_path / "split").is_dir()
