"""Build the packaged ``chatterbot_qa`` demo dataset (BEIR layout) from chatterbot-corpus.

Source: the PyPI package ``chatterbot-corpus`` 1.3.3 (BSD-3-Clause, (c) Gunther Cox),
read from the installed package (``chatterbot_corpus/data/english/*.yml``).

Steps
-----
1. Extract (question, answer) pairs from every English ``.yml`` file:

   * most files hold ``[question, answer]`` lists; longer lists are read as
     consecutive ``(turn 2i, turn 2i+1)`` pairs (dialogues, repeated pairs);
   * ``computers``, ``emotion`` and ``psychology`` use longer lists as
     ``[question, alternative answer, alternative answer, ...]``, so every
     later element is paired with the first.

   Each pair gets the candidate id ``<category>-<n>`` where ``category`` is the
   file stem and ``n`` the index of the pair within that file (before any
   filtering, so ids do not move when the filters change).

2. Automatic filters: answers with fewer than ``MIN_WORDS`` words, answers in
   ``GENERIC_ANSWERS`` and exact duplicate answers (same category, same text
   after whitespace normalisation) are dropped; a duplicated answer keeps the id of
   its first occurrence and collects all the questions it was given for.

3. Hand curation: only candidates listed in ``chatterbot_rewordings.tsv``
   (``doc-id<TAB>reworded question``, written by hand by the softcar developers)
   become documents. Candidates were left out when they were chit-chat, needed the
   conversation context, or when their question already had a (better) answer:
   every original question maps to exactly one document, so queries are
   unambiguous.

Run ``python benchmarks/data/build_chatterbot_qa.py --list`` to print all
candidates after the automatic filters; without ``--list`` it (re)writes
``src/softcar/data/chatterbot_qa/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import OrderedDict
from pathlib import Path

import chatterbot_corpus
import yaml

REPO = Path(__file__).resolve().parents[2]
REWORDINGS = Path(__file__).resolve().parent / "chatterbot_rewordings.tsv"
OUT = REPO / "src" / "softcar" / "data" / "chatterbot_qa"
SOURCE = Path(chatterbot_corpus.__file__).resolve().parent / "data" / "english"

ALTERNATIVE_ANSWER_FILES = {"computers", "emotion", "psychology"}
MIN_WORDS = 6
GENERIC_ANSWERS = {
    "i don't know.",
    "i do not know.",
    "i don't understand.",
    "what do you want to know?",
    "why do you ask?",
}

# Verbatim from license.md of https://github.com/gunthercox/chatterbot-corpus
# (the 1.3.3 wheel ships no licence file; its metadata says BSD-3-Clause).
UPSTREAM_LICENSE = """\
Copyright (c) 2017, Gunther Cox All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted provided that the following conditions are met:

    Redistributions of source code must retain the above copyright notice, this list of conditions and the following disclaimer.

    Redistributions in binary form must reproduce the above copyright notice, this list of conditions and the following disclaimer in the documentation and/or other materials provided with the distribution.

    Neither the name of chatterbot nor the names of its contributors may be used to endorse or promote products derived from this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""  # noqa: E501 (verbatim licence text)

LICENSE_TEXT = (
    "The documents and original questions in this folder come from chatterbot-corpus 1.3.3\n"
    "(https://github.com/gunthercox/chatterbot-corpus, https://pypi.org/project/chatterbot-corpus/),\n"
    "released under the BSD 3-Clause License:\n\n"
    + UPSTREAM_LICENSE
    + "\nThe reworded questions (ids r-*) and the selection of documents were written by the\n"
    "softcar developers and are released under the same BSD 3-Clause License.\n"
)

README_TEMPLATE = """\
# chatterbot_qa: a small question-to-answer retrieval set

A demo and test dataset for softcar in [BEIR](https://github.com/beir-cellar/beir) layout:
each document is one answer from the ChatterBot English training corpus, and the task
is to find the answer for a question.

## Source and licence

* Package: [`chatterbot-corpus`](https://pypi.org/project/chatterbot-corpus/) **1.3.3**
  (<https://github.com/gunthercox/chatterbot-corpus>), files `chatterbot_corpus/data/english/*.yml`.
* Licence: BSD 3-Clause, (c) Gunther Cox; see `LICENSE`. The reworded questions and the
  selection of documents were written by the softcar developers and are released under
  the same licence.
* Built by `benchmarks/data/build_chatterbot_qa.py` from the installed package and the
  hand-written `benchmarks/data/chatterbot_rewordings.tsv`; rerun it to regenerate this folder.

## How it was built

1. Every English corpus file gives (question, answer) pairs. Lists longer than two are
   read as consecutive turn pairs, except in `computers`, `emotion` and `psychology`,
   where they are one question followed by alternative answers.
2. Automatic filters: answers shorter than {min_words} words, generic replies
   ("I don't know.", ...) and exact duplicate answers are dropped; an answer given for
   several questions is kept once and all those questions point to it.
   This leaves {n_cands} candidates.
3. Hand curation: {n_docs} candidates were kept. Left out were chit-chat and replies
   that only make sense inside a dialogue, one-word trivia answers, and every extra
   answer to a question that already had one: each original question has exactly one
   relevant document, and near-duplicate questions ("When will you die" /
   "When do you die") keep only one answer.
4. For every kept document the softcar developers wrote one new question with the same
   intent but different wording (ids `r-<doc id>`), to test generalisation to
   rephrasings.

## Files

| file | content |
| --- | --- |
| `corpus.jsonl` | {n_docs} documents: `_id` (`<category>-<n>`, n = pair index in the source file), `title` (empty), `text` (the answer), `metadata.category` |
| `queries.jsonl` | {n_queries} queries: {n_orig} original questions (`q-<doc id>-<j>`) and {n_reworded} reworded ones (`r-<doc id>`) |
| `qrels/train.tsv` | original questions -> document (score 1), for training |
| `qrels/original.tsv` | identical to `train.tsv`; evaluates the original questions, e.g. for a model trained on documents only |
| `qrels/test.tsv` | reworded questions -> document (score 1) |

{n_multi} documents answer more than one original question.

Documents per category:

| category | documents |
| --- | --- |
{per_category}

Answers are reproduced as they appear in the corpus, typos and all (for example
"Tolkein", "wester"); the `coding` answers contain Markdown code blocks.
"""  # noqa: E501 (Markdown table rows of the generated README)


def norm_space(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def norm_question(text: str) -> str:
    return norm_space(text).lower().rstrip("?!. ")


def clean_answer(text: str) -> str:
    # Keep line breaks inside code answers, trim trailing spaces and blank tails.
    lines = [line.rstrip() for line in str(text).strip().splitlines()]
    if "```" in text:
        return "\n".join(lines).strip()
    return norm_space(" ".join(lines))


def extract_pairs(path: Path) -> list[tuple[str, str]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    pairs: list[tuple[str, str]] = []
    for conv in data["conversations"]:
        conv = [str(x) for x in conv]
        if path.stem in ALTERNATIVE_ANSWER_FILES:
            pairs.extend((conv[0], a) for a in conv[1:])
        else:
            pairs.extend((conv[i], conv[i + 1]) for i in range(0, len(conv) - 1, 2))
    return pairs


def candidates() -> OrderedDict[str, dict]:
    """Candidate documents after the automatic filters, keyed by candidate id."""
    cands: OrderedDict[str, dict] = OrderedDict()
    for path in sorted(SOURCE.glob("*.yml")):
        category = path.stem.lower()
        by_answer: dict[str, str] = {}
        for n, (question, answer) in enumerate(extract_pairs(path)):
            text = clean_answer(answer)
            if len(text.split()) < MIN_WORDS or text.lower() in GENERIC_ANSWERS:
                continue
            key = norm_space(text).lower()
            doc_id = by_answer.get(key)
            if doc_id is None:
                doc_id = f"{category}-{n}"
                by_answer[key] = doc_id
                cands[doc_id] = {"category": category, "text": text, "questions": []}
            q = norm_space(question)
            if norm_question(q) not in {norm_question(x) for x in cands[doc_id]["questions"]}:
                cands[doc_id]["questions"].append(q)
    return cands


def read_rewordings() -> OrderedDict[str, str]:
    rows: OrderedDict[str, str] = OrderedDict()
    with REWORDINGS.open(encoding="utf-8", newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if line_no == 1 and row[0] == "doc-id":
                continue
            if not row or not row[0].strip():
                continue
            if len(row) != 2:
                raise ValueError(f"{REWORDINGS}:{line_no}: expected 2 columns, got {len(row)}")
            doc_id, text = row[0].strip(), norm_space(row[1])
            if doc_id in rows:
                raise ValueError(f"{REWORDINGS}:{line_no}: duplicate doc id {doc_id}")
            rows[doc_id] = text
    return rows


def build() -> None:
    cands = candidates()
    rewordings = read_rewordings()
    unknown = [d for d in rewordings if d not in cands]
    if unknown:
        raise SystemExit(f"rewordings name unknown candidate ids: {unknown}")
    kept = [d for d in cands if d in rewordings]  # source order

    # Every original question must point at exactly one kept document.
    owner: dict[str, str] = {}
    for doc_id in kept:
        for q in cands[doc_id]["questions"]:
            k = norm_question(q)
            if k in owner and owner[k] != doc_id:
                raise SystemExit(f"question {q!r} maps to both {owner[k]} and {doc_id}")
            owner[k] = doc_id
    for doc_id in kept:
        if norm_question(rewordings[doc_id]) in owner:
            raise SystemExit(f"rewording for {doc_id} repeats an original question")

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "qrels").mkdir(exist_ok=True)
    train_rows, test_rows = [], []
    with (OUT / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id in kept:
            c = cands[doc_id]
            rec = {"_id": doc_id, "title": "", "text": c["text"], "metadata": {"category": c["category"]}}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with (OUT / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id in kept:
            for j, q in enumerate(cands[doc_id]["questions"]):
                qid = f"q-{doc_id}-{j}"
                fh.write(json.dumps({"_id": qid, "text": q}, ensure_ascii=False) + "\n")
                train_rows.append((qid, doc_id))
        for doc_id in kept:
            qid = f"r-{doc_id}"
            fh.write(json.dumps({"_id": qid, "text": rewordings[doc_id]}, ensure_ascii=False) + "\n")
            test_rows.append((qid, doc_id))
    for name, rows in (("train", train_rows), ("original", train_rows), ("test", test_rows)):
        with (OUT / "qrels" / f"{name}.tsv").open("w", encoding="utf-8", newline="") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid, doc_id in rows:
                fh.write(f"{qid}\t{doc_id}\t1\n")
    cats: OrderedDict[str, int] = OrderedDict()
    for doc_id in kept:
        cats[cands[doc_id]["category"]] = cats.get(cands[doc_id]["category"], 0) + 1
    (OUT / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    (OUT / "README.md").write_text(
        README_TEMPLATE.format(
            n_docs=len(kept),
            n_cands=len(cands),
            n_orig=len(train_rows),
            n_reworded=len(test_rows),
            n_queries=len(train_rows) + len(test_rows),
            n_multi=sum(len(cands[d]["questions"]) > 1 for d in kept),
            min_words=MIN_WORDS,
            per_category="\n".join(f"| {k} | {v} |" for k, v in cats.items()),
        ),
        encoding="utf-8",
    )
    print(f"documents: {len(kept)} (of {len(cands)} candidates)")
    print(f"original questions: {len(train_rows)}, reworded questions: {len(test_rows)}")
    print("per category: " + ", ".join(f"{k} {v}" for k, v in cats.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the candidates and exit")
    args = parser.parse_args(argv)
    if args.list:
        for doc_id, c in candidates().items():
            text = c["text"].replace("\n", " ")
            print(f"{doc_id}\t{' | '.join(c['questions'])}\t{text[:160]}")
        return
    build()


if __name__ == "__main__":
    main(sys.argv[1:])
