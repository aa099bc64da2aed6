"""Prompt files (imagen_ray.prompts): one reader for `sample`, `generate`, `eval prompts`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagen_ray.cli import main
from imagen_ray.cli.model import read_prompts
from imagen_ray.eval.suite import SuitePrompt, read_suite
from imagen_ray.prompts import Prompt, read_csv, read_prompt_file

BOM = "\ufeff"
FILES = {
    "p.txt": "a red circle\n\n  two blue squares  \n",
    "p.csv": 'prompt,id\na red circle,1\n"two blue squares",2\n',
    "p.jsonl": '{"prompt": "a red circle", "id": 1}\n"two blue squares"\n',
}


@pytest.mark.parametrize("bom", ["", BOM], ids=["plain", "bom"])
@pytest.mark.parametrize("name", sorted(FILES))
def test_every_format_reads_utf8_with_or_without_a_bom(tmp_path: Path, name: str, bom: str) -> None:
    path = tmp_path / name
    path.write_bytes((bom + FILES[name]).encode("utf-8"))
    prompts = read_prompt_file(path)
    assert [p.text for p in prompts] == ["a red circle", "two blue squares"]
    if name != "p.txt":  # the BOM never sticks to the first column / key
        assert prompts[0].meta == {"id": "1" if name == "p.csv" else 1}
    # `sample --prompts-file` reads the same file the same way
    assert read_prompts(["first"], str(path)) == ["first", "a red circle", "two blue squares"]


def test_non_ascii_prompts_survive(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_bytes((BOM + "un cœur rouge\n東京の夜\n").encode("utf-8"))
    assert [p.text for p in read_prompt_file(tmp_path / "p.txt")] == ["un cœur rouge", "東京の夜"]


def test_sample_reads_any_other_suffix_as_lines_and_allows_only_flags(tmp_path: Path) -> None:
    (tmp_path / "prompts").write_text("x\ny\n")
    assert read_prompts([], str(tmp_path / "prompts")) == ["x", "y"]
    (tmp_path / "empty.txt").write_text("\n")
    assert read_prompts(["z"], str(tmp_path / "empty.txt")) == ["z"]
    with pytest.raises(ValueError, match="no prompts: pass --prompt"):
        read_prompts([], str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts([], str(tmp_path / "nope.txt"))
    # generate names the formats instead
    (tmp_path / "x.yaml").write_text("a\n")
    with pytest.raises(ValueError, match=r"unknown format '\.yaml'"):
        read_prompt_file(tmp_path / "x.yaml")


@pytest.mark.parametrize("bom", ["", BOM], ids=["plain", "bom"])
def test_eval_suite_reads_through_the_same_csv_reader(tmp_path: Path, bom: str) -> None:
    suite = tmp_path / "suite.csv"
    suite.write_bytes((bom + "Prompts,Category\na cat,Animals\n\n,\n,Animals\n").encode())
    table = read_csv(suite)
    assert table.columns == ["Prompts", "Category"]
    assert [line for line, _ in table.rows] == [2, 4, 5]  # line numbers count blank lines
    with pytest.raises(ValueError, match="line 5 has no 'Prompts'"):
        read_suite(suite)
    suite.write_bytes((bom + "Prompts,Category\na cat,Animals\n").encode())
    assert read_suite(suite) == [SuitePrompt("a cat", "Animals")]


def test_prompt_defaults_to_no_metadata() -> None:
    assert Prompt("a") == Prompt("a", {})


def test_prompt_files_txt_csv_jsonl(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a red circle\n\n  two blue squares  \n")
    assert [p.text for p in read_prompt_file(tmp_path / "p.txt")] == [
        "a red circle",
        "two blue squares",
    ]
    # DrawBench's layout: Prompts, Category; other columns are kept as metadata
    (tmp_path / "d.csv").write_text('Prompts,Category\n"a cat, on a mat",Animals\nfog,Scenes\n')
    rows = read_prompt_file(tmp_path / "d.csv")
    assert [(p.text, p.meta) for p in rows] == [
        ("a cat, on a mat", {"Category": "Animals"}),
        ("fog", {"Category": "Scenes"}),
    ]
    (tmp_path / "c.csv").write_text("id,words\n1,hello\n")
    assert read_prompt_file(tmp_path / "c.csv", column="words")[0].meta == {"id": "1"}
    (tmp_path / "p.jsonl").write_text('{"prompt": "x", "tag": 3}\n\n"y"\n')
    assert [(p.text, p.meta) for p in read_prompt_file(tmp_path / "p.jsonl")] == [
        ("x", {"tag": 3}),
        ("y", {}),
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.yaml", "a: b\n", "unknown format '.yaml'; use one of .txt, .csv, .jsonl"),
        ("p.txt", "\n  \n", "has no prompts"),
        ("p.csv", "id,words\n1,hello\n", "columns are ['id', 'words']"),
        ("p.csv", "prompt\nok\n\n,\n", "p.csv:4: empty prompt"),
        ("p.jsonl", '{"prompt": "ok"}\n{"text": "no"}\n', "p.jsonl:2: expected an object"),
        ("p.jsonl", '{"prompt": "ok"}\n{oops\n', "p.jsonl:2: not valid JSON"),
    ],
)
def test_bad_prompt_files_name_the_problem(
    tmp_path: Path, capsys, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_prompt_file(tmp_path / name)
    # the command exits 2 with the same message, before any cascade or Ray work
    args = ["generate", "--cascade", str(tmp_path), "--prompts", str(tmp_path / name)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
