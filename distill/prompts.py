"""The R1 prompt and answer layout, defined once: the user turn, the boxed instruction (and the code tasks' code-block
instruction), the <think> markers and prefill, the completion layout '<think>\n…\n</think>\n\n<answer>', where the
answer part starts, the last box, and the SFT messages."""

from __future__ import annotations

import re
from pathlib import Path

from distill.errors import DistillError

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_TEMPLATE = "{problem}\n" + R1_INSTRUCTION.replace("{", "{{").replace("}", "}}")
# Code tasks are graded on the last ```python block after </think> (verify/code.py), not on a box.
CODE_INSTRUCTION = ("Please reason step by step, then give your complete solution as a single Python code block "
                    "(```python ... ```) at the end of your answer.")
CODE_TEMPLATE = "{problem}\n\n" + CODE_INSTRUCTION
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_PREFILL = THINK_OPEN + "\n"
FORCE_ANSWER = "\n" + THINK_CLOSE + "\n\n"  # what a capped thought is closed with, so the model answers now
WAIT = "Wait"  # s1 budget forcing: replaces an early </think> so the thought goes on


def load_template(path: str | Path | None) -> str:
    """A custom user-turn template from a file; it must contain {problem} (literal braces doubled: {{}})."""
    if path is None:
        return DEFAULT_TEMPLATE
    p = Path(path)
    if not p.is_file():
        raise DistillError(f"prompt template {p}: file not found")
    return check_template(p.read_text(encoding="utf-8"), f"prompt template {p}")


def check_template(text: str, what: str) -> str:
    """`text` if it is a user-turn template: {problem} in it, other braces doubled; else a DistillError about `what`."""
    try:
        text.format(problem="x")
    except (KeyError, IndexError, ValueError) as e:
        raise DistillError(f"{what}: must contain {{problem}} and double other braces ({e!r})") from None
    if "{problem}" not in text:
        raise DistillError(f"{what}: must contain {{problem}}")
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


def generation_prompt(tokenizer, problem: str, template: str = DEFAULT_TEMPLATE, think_prefill: str = "auto",
                      chat_template: str | None = None) -> tuple[str, bool]:
    """The chat template (`chat_template`, else the tokenizer's own) with add_generation_prompt, then the
    '<think>\\n' prefill.

    Returns (prompt text, prefilled): prefilled says the engine's text starts inside the thought.
    A template that already ends with '<think>' (R1-distill templates do) is never prefilled twice. Otherwise:
    on appends '<think>\\n'; off renders the template untouched; auto appends it when '<think>' is one token of
    the teacher's vocabulary (a reasoning teacher), and not for a teacher that would see it as stray characters.
    """
    if not (chat_template or getattr(tokenizer, "chat_template", None)):
        raise DistillError("teacher tokenizer has no chat template; use an instruct/reasoning model (not a base model)")
    extra = {"chat_template": chat_template} if chat_template else {}
    text = tokenizer.apply_chat_template(chat_messages(problem, template), tokenize=False, add_generation_prompt=True,
                                         **extra)
    if text.rstrip().endswith(THINK_OPEN):
        return text, True
    if think_prefill == "on" or (think_prefill == "auto" and THINK_OPEN in tokenizer.get_vocab()):
        return text + THINK_PREFILL, True
    return text, False


def r1_completion(reasoning: str, answer: str) -> str:
    """The one completion layout every source is stored and trained in: '<think>\n{reasoning}\n</think>\n\n{answer}'."""
    return f"{THINK_PREFILL}{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{answer.lstrip()}"


def normalize_completion(text: str) -> str:
    """Any '<think>…</think>answer' text in the R1 layout; a completion without </think> is returned as is."""
    if THINK_CLOSE not in text:
        return text
    head, answer = text.split(THINK_CLOSE, 1)
    reasoning = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head  # '<think>\n' prefill not stored
    return r1_completion(reasoning, answer)


def answer_part(completion: str) -> str:
    """The text after the last `</think>`; the whole completion when it has no think block.

    A completion that opens `<think>` and never closes it was cut off mid-thought: its answer part is empty, so a
    box it wrote while thinking is never graded as the answer.
    """
    end = completion.rfind(THINK_CLOSE)
    if end >= 0:
        return completion[end + len(THINK_CLOSE):]
    if THINK_OPEN in completion:
        return ""
    return completion


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TOKEN = re.compile(r"[^\s$]+")


def boxes(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, content) of every top-level `\\boxed{…}` / `\\fbox{…}` in `text`, in order; content None for a
    box that is empty or never closes (it then runs to the end of the text)."""
    found, pos = [], 0
    while (m := _BOX.search(text, pos)) is not None:
        content, end = box_content(text, m.end())
        found.append((m.start(), end, content))
        pos = end
    return found


def last_boxed(text: str) -> str | None:
    """The content of the last box of the answer part (see `answer_part`); None when there is none or it is
    empty or unclosed."""
    found = boxes(answer_part(text))
    return found[-1][2] if found else None


def box_content(text: str, start: int) -> tuple[str | None, int]:
    """(content or None, index after the box) of the box whose command ends at `start`: balanced braces,
    `\\boxed 5` (one token) too."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i == len(text):
        return None, len(text)
    if text[i] != "{":  # "\boxed 5": one token
        token = _TOKEN.match(text, i)
        return (token.group(0), token.end()) if token else (None, i)
    closed = _closing_brace(text, i, escapes=True)
    if closed is None:
        # "\boxed{185\}": a stray backslash before the closing brace, not a literal brace
        closed = _closing_brace(text, i, escapes=False)
        if closed is None:
            return None, len(text)
    content = text[i + 1:closed].strip()
    content = content.rstrip("\\").strip() if not content.endswith("\\\\") else content[:-2].strip()
    return content or None, closed + 1


def _closing_brace(text: str, i: int, escapes: bool) -> int | None:
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\" and (escapes or text[j + 1:j + 2] not in ("{", "}")):
            j += 2  # \{ and \} are literal braces, not grouping
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return None


def join_reasoning(reasoning: str | None, content: str | None, finish_reason: str) -> str:
    """A server that splits the thought out (reasoning / reasoning_content) gets it stored back as one completion:
    '<think>\\n…\\n</think>\\n\\n<answer>'. A thought cut off by the length limit stays unclosed, so filters see it."""
    content = content or ""
    if reasoning is None:
        return content
    if not content and finish_reason == "length":
        return THINK_PREFILL + reasoning
    return r1_completion(reasoning, content)


def sft_messages(problem: str, completion: str, template: str = DEFAULT_TEMPLATE) -> list[dict[str, str]]:
    """The SFT conversation: the same user turn as generation, the full completion (with <think>) as the answer."""
    return chat_messages(problem, template) + [{"role": "assistant", "content": completion}]
