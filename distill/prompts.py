"""The R1 prompt, defined once: the user turn, the boxed instruction, the <think> prefill, the SFT messages."""

from __future__ import annotations

from pathlib import Path

from distill.errors import DistillError

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_TEMPLATE = "{problem}\n" + R1_INSTRUCTION.replace("{", "{{").replace("}", "}}")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_PREFILL = THINK_OPEN + "\n"


def load_template(path: str | Path | None) -> str:
    """A custom user-turn template from a file; it must contain {problem} (literal braces doubled: {{}})."""
    if path is None:
        return DEFAULT_TEMPLATE
    p = Path(path)
    if not p.is_file():
        raise DistillError(f"prompt template {p}: file not found")
    text = p.read_text(encoding="utf-8")
    try:
        text.format(problem="x")
    except (KeyError, IndexError, ValueError) as e:
        raise DistillError(f"prompt template {p}: must contain {{problem}} and double other braces ({e!r})") from None
    if "{problem}" not in text:
        raise DistillError(f"prompt template {p}: must contain {{problem}}")
    return text


def user_prompt(problem: str, template: str = DEFAULT_TEMPLATE) -> str:
    """R1 protocol: no system prompt; the user turn is the problem followed by the boxed instruction."""
    return template.format(problem=problem)


def chat_messages(problem: str, template: str = DEFAULT_TEMPLATE) -> list[dict[str, str]]:
    return [{"role": "user", "content": user_prompt(problem, template)}]


def with_think_prefix(completion: str, prefilled: bool) -> str:
    """When the prompt ended with the '<think>\\n' prefill the engine's text starts inside the thought; store the
    completion whole, so every record's completion holds its own <think>."""
    return THINK_PREFILL + completion if prefilled and not completion.lstrip().startswith(THINK_OPEN) else completion


def generation_prompt(tokenizer, problem: str, template: str = DEFAULT_TEMPLATE, think_prefill: str = "auto") -> tuple[str, bool]:
    """The teacher's own chat template with add_generation_prompt, then the '<think>\\n' prefill.

    Returns (prompt text, prefilled): prefilled says the engine's text starts inside the thought.
    A template that already ends with '<think>' (R1-distill templates do) is never prefilled twice. Otherwise:
    on appends '<think>\\n'; off renders the template untouched; auto appends it when '<think>' is one token of
    the teacher's vocabulary (a reasoning teacher), and not for a teacher that would see it as stray characters.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DistillError("teacher tokenizer has no chat template; use an instruct/reasoning model (not a base model)")
    text = tokenizer.apply_chat_template(chat_messages(problem, template), tokenize=False, add_generation_prompt=True)
    if text.rstrip().endswith(THINK_OPEN):
        return text, True
    if think_prefill == "on" or (think_prefill == "auto" and THINK_OPEN in tokenizer.get_vocab()):
        return text + THINK_PREFILL, True
    return text, False


def join_reasoning(reasoning: str | None, content: str | None, finish_reason: str) -> str:
    """A server that splits the thought out (reasoning / reasoning_content) gets it stored back as one completion:
    '<think>\\n…\\n</think>\\n\\n<answer>'. A thought cut off by the length limit stays unclosed, so filters see it."""
    content = content or ""
    if reasoning is None:
        return content
    if not content and finish_reason == "length":
        return THINK_PREFILL + reasoning
    return f"{THINK_PREFILL}{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{content.lstrip()}"


def sft_messages(problem: str, completion: str, template: str = DEFAULT_TEMPLATE) -> list[dict[str, str]]:
    """The SFT conversation: the same user turn as generation, the full completion (with <think>) as the answer."""
    return chat_messages(problem, template) + [{"role": "assistant", "content": completion}]
