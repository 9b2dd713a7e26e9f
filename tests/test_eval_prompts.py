"""Judge prompts: the package's versioned copies of the paper's prompts, selection, extension."""

import json

import pytest

from vichat.evaluate.prompts import ENV_VAR, load_prompts
from vichat.records import VichatError


def test_package_prompts_are_the_papers_word_for_word(shared_data):
    book = load_prompts()
    ours = {p.category: p for p in book.latest("vicuna")}
    for line in (shared_data / "eval" / "judge_prompts.jsonl").read_text(encoding="utf-8").splitlines():
        theirs = json.loads(line)
        p = ours[theirs["category"]]
        assert p.system_prompt == theirs["system_prompt"]
        assert p.prompt_template == theirs["prompt_template"]
        assert p.instruction == theirs["defaults"]["prompt"]
        assert p.version == 1 and "Apache-2.0" in p.license and "FastChat" in p.source


def test_categories_pick_their_prompt():
    book = load_prompts()
    assert book.for_category("coding").prompt_id == "vicuna-coding"
    assert book.for_category("math").prompt_id == "vicuna-math"
    assert book.for_category("math").output == "tuple"
    for cat in ("generic", "writing", "fermi", "medical"):
        assert book.for_category(cat).prompt_id == "vicuna-general"


def test_render_is_literal_about_braces():
    p = load_prompts().for_category("generic")
    text = p.render("Q {x}?", "uses {answer_2} and {prompt}", "B")
    assert "uses {answer_2} and {prompt}" in text  # never substituted twice
    assert text.startswith("[Question]\nQ {x}?\n\n[The Start of Assistant 1's Answer]\n")
    msgs = p.messages("Q", "A", "B")
    assert msgs[0] == {"role": "system", "content": "You are a helpful and precise assistant for checking the quality of the answer."}
    assert "Please rate the helpfulness, relevance, accuracy, level of details" in msgs[1]["content"]


def _write(path, **fields):
    base = {"prompt_id": "med-general", "version": 1, "set": "medical", "system_prompt": "S",
            "prompt_template": "{question}|{answer_1}|{answer_2}|{prompt}", "instruction": "rate", "applies_to": ["*"]}
    path.write_text(json.dumps({**base, **fields}) + "\n", encoding="utf-8")


def test_prompts_from_env_dirs_and_paths(tmp_path, monkeypatch):
    d = tmp_path / "plugin_prompts"
    d.mkdir()
    _write(d / "a.jsonl")
    _write(tmp_path / "v2.jsonl", version=2, instruction="rate carefully")
    monkeypatch.setenv(ENV_VAR, str(d))
    book = load_prompts([tmp_path / "v2.jsonl"])
    assert "medical" in book.sets() and "vicuna" in book.sets()
    assert book.for_category("anything", "medical").instruction == "rate carefully"  # newest version wins
    assert book.latest("medical", version=1)[0].instruction == "rate"


def test_a_version_means_one_text(tmp_path):
    _write(tmp_path / "a.jsonl")
    _write(tmp_path / "b.jsonl", instruction="changed words")
    with pytest.raises(VichatError, match=r"med-general@v1 is defined twice.*a\.jsonl:1.*b\.jsonl:1"):
        load_prompts([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])


def test_bad_prompt_lines_name_the_place(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt_id": "x"}\n', encoding="utf-8")
    with pytest.raises(VichatError, match=r"bad\.jsonl:1: judge prompt lacks version"):
        load_prompts([tmp_path / "bad.jsonl"])
    _write(tmp_path / "bad.jsonl", prompt_template="{question} only")
    with pytest.raises(VichatError, match="must contain {answer_1}"):
        load_prompts([tmp_path / "bad.jsonl"])
    with pytest.raises(VichatError, match="no judge prompt set 'nope'"):
        load_prompts().for_category("generic", "nope")


def test_a_plugin_registers_a_prompt_set(tmp_path):
    import json
    import types

    from vichat.evaluate.prompts import prompt_sources
    from vichat.hookspecs import hookimpl
    from vichat.plugins import build_registry
    from vichat.specs import JudgePromptsSpec

    general = load_prompts().for_category("generic")
    row = {**{k: getattr(general, k) for k in ("system_prompt", "prompt_template", "instruction")},
           "prompt_id": "med-general", "version": 1, "set": "medical-vi", "applies_to": ["*"]}
    (tmp_path / "med.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    plugin = types.ModuleType("med_prompts")
    plugin.register_judge_prompts = hookimpl(
        lambda register: register(JudgePromptsSpec(name="medical-vi", description="test set", path=str(tmp_path))))
    registry = build_registry([("med", plugin)])
    assert registry.owner("judge_prompts", "medical-vi") == "med"
    assert registry.owner("judge_prompts", "vicuna") == "judge-prompts"
    files = prompt_sources(prompt_sets=registry.all("judge_prompts"))
    assert tmp_path / "med.jsonl" in files
