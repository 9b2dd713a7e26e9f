"""Built-in judge prompt sets: the paper's GPT-4 judge prompts (FastChat's, versioned)."""

from vichat.evaluate.prompts import package_prompts_dir
from vichat.plugin import hookimpl, JudgePromptsSpec


@hookimpl
def register_judge_prompts(register):
    register(JudgePromptsSpec(
        name="vicuna",
        description="The paper's pairwise GPT-4 judge prompts: general, coding and math (FastChat, Apache-2.0).",
        path=str(package_prompts_dir() / "vicuna.jsonl"),
    ))
