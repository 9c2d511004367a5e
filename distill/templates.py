"""Chat templates: detect (by rendering) templates that delete <think> or inject a default system prompt, and
switch to one of the same family that does neither. SFT trains with the choice and saves it with the model;
generation and eval render prompts with the same rule, so a model sees at inference what it was trained on, and the
R1 protocol (no system prompt) holds for models whose template adds one (Qwen2.5-Instruct, SmolLM2, Llama-3.1).

Why rendering, not reading the template source: the stripping shows up in many spellings
(`content.split('</think>')[-1]` in DeepSeek-R1-Distill, a `reasoning_content` split limited to turns after the
last user query in Qwen3). What matters is whether the reasoning we train on reaches the tokens; so we render a
probe conversation and look for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError

log = logging.getLogger(__name__)

# Two assistant turns: R1-Distill deletes reasoning in every assistant turn, Qwen3 only in turns before the last
# user message; a multi-turn dataset trains on both kinds.
_REASONING = ("distill probe reasoning one", "distill probe reasoning two")
PROBE: list[dict[str, str]] = [
    {"role": "user", "content": "distill probe question one"},
    {"role": "assistant", "content": f"<think>\n{_REASONING[0]}\n</think>\n\ndistill probe answer one"},
    {"role": "user", "content": "distill probe question two"},
    {"role": "assistant", "content": f"<think>\n{_REASONING[1]}\n</think>\n\ndistill probe answer two"},
]

# ChatML as Qwen2.5 renders it, minus the default system prompt and tool handling; assistant content verbatim.
CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# DeepSeek-R1-Distill's own format with its `content.split('</think>')[-1]` removed. The generation prompt keeps
# R1's '<think>\n' prefill, so inference (vLLM with this saved template) matches the trained context.
DEEPSEEK_R1 = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{{ bos_token or '' }}{{ ns.system }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<｜Assistant｜><think>\\n' }}{%- endif -%}"
)

# Llama-3 headers, for Llama students whose base tokenizer has no chat template.
LLAMA3 = (
    "{{ bos_token or '' }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

TRAINING_TEMPLATES: dict[str, str] = {"chatml": CHATML, "deepseek-r1": DEEPSEEK_R1, "llama3": LLAMA3}
# Tokens a training template needs in the vocabulary (we never add role tokens: new embeddings start untrained).
_NEEDS = {"chatml": ("<|im_start|>", "<|im_end|>"), "deepseek-r1": ("<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
          "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}


@dataclass
class TemplateChoice:
    template: str  # the Jinja source the model is trained (and saved) with
    name: str  # "own", "chatml", "deepseek-r1", "llama3" or a file path
    note: str  # one line for the log and the preflight report


def render(tokenizer, messages: list[dict[str, str]], template: str | None = None, **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
    except Exception as e:  # jinja raises many types (TemplateError, TypeError on missing fields); one line for all
        raise DistillError(f"chat template: rendering failed ({type(e).__name__}: {e}); "
                           f"pass --chat-template chatml or a .jinja file") from None


_USER_PROBE = "distill probe user turn"


def injected_system(tokenizer, template: str | None = None) -> str | None:
    """The default system prompt the template adds when the conversation has none (its first words), or None."""
    text = render(tokenizer, [{"role": "user", "content": _USER_PROBE}], template, add_generation_prompt=True)
    prefix = text[:text.find(_USER_PROBE)]
    if "system" not in prefix:
        return None
    for token in sorted(set(tokenizer.all_special_tokens) | set(_added(tokenizer)), key=len, reverse=True):
        prefix = prefix.replace(token, " ")
    words = " ".join(prefix.replace("system", " ", 1).split())
    for role in ("user", "assistant"):
        words = words.removesuffix(role).strip()
    return words[:80] or "(an empty system turn)"


def inference_template(tokenizer) -> TemplateChoice:
    """The template generation prompts are rendered with: the model's own, unless it injects a default system prompt
    (then the same family's template without one)."""
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if not own:
        raise DistillError("the model's tokenizer has no chat template; use an instruct/reasoning model (not a base "
                           "model), or train one with `distill sft`, which saves the template it trained with")
    system = injected_system(tokenizer, own)
    if system is None:
        return TemplateChoice(own, "own", "model's own template")
    family = _family(tokenizer, own)
    return TemplateChoice(TRAINING_TEMPLATES[family], family,
                          f"the model's template injects a default system prompt ({system!r}); rendered with the "
                          f"{family} template without it (R1 protocol: no system prompt)")


def lost_reasoning(tokenizer, template: str | None = None) -> list[int]:
    """1-based assistant turns of the probe whose <think> content did not survive rendering ([] = keeps it)."""
    text = render(tokenizer, PROBE, template)
    return [i + 1 for i, r in enumerate(_REASONING) if f"<think>\n{r}\n</think>" not in text and r not in text]


def _vocab_has(tokenizer, tokens: tuple[str, ...]) -> bool:
    vocab = tokenizer.get_vocab()
    return all(t in vocab for t in tokens)


def _family(tokenizer, template: str | None) -> str:
    """Which training template matches this tokenizer, decided from what its template renders and its vocabulary."""
    rendered = ""
    if template or tokenizer.chat_template:
        try:
            rendered = render(tokenizer, PROBE[:2], template)
        except DistillError:
            rendered = ""
    for name, marker in (("deepseek-r1", "<｜Assistant｜>"), ("llama3", "<|start_header_id|>"), ("chatml", "<|im_start|>")):
        if marker in rendered and _vocab_has(tokenizer, _NEEDS[name]):
            return name
    for name in ("chatml", "llama3", "deepseek-r1"):
        if _vocab_has(tokenizer, _NEEDS[name]):
            return name
    raise DistillError("chat template: the student's template is missing or deletes <think>, and its vocabulary has "
                       "no ChatML/Llama-3/DeepSeek role tokens; pass --chat-template FILE.jinja with a template "
                       "that keeps assistant content verbatim")


def choose_template(tokenizer, mode: str = "auto") -> TemplateChoice:
    """auto: the student's own template if it keeps <think> in every assistant turn, else a training template of
    the same family that does; own / chatml / deepseek-r1 / llama3 / a .jinja file: exactly that."""
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if mode == "own":
        if not own:
            raise DistillError("chat template: --chat-template own, but the student's tokenizer has none; "
                               "use --chat-template auto")
        lost = lost_reasoning(tokenizer, own)
        note = "student's own template" + (f" (WARNING: deletes <think> in assistant turn(s) {lost})" if lost else "")
        return TemplateChoice(own, "own", note)
    if mode in TRAINING_TEMPLATES:
        return TemplateChoice(TRAINING_TEMPLATES[mode], mode, f"{mode} training template (--chat-template {mode})")
    if mode != "auto":
        path = Path(mode)
        if not path.is_file():
            raise DistillError(f"chat template {mode}: not a file nor one of auto, own, "
                               f"{', '.join(TRAINING_TEMPLATES)}; pass one of those")
        text = path.read_text(encoding="utf-8")
        lost = lost_reasoning(tokenizer, text)
        if lost:
            raise DistillError(f"chat template {path}: deletes the <think> reasoning from assistant turn(s) {lost} "
                               f"when rendered; fix the template or use --chat-template auto")
        return TemplateChoice(text, str(path), f"template from {path}")
    if own:
        lost = lost_reasoning(tokenizer, own)
        system = injected_system(tokenizer, own)
        if not lost and system is None:
            return TemplateChoice(own, "own", "student's own template (keeps <think> in assistant turns)")
        family = _family(tokenizer, own)
        if lost:
            why = (f"the student's template deletes the <think> reasoning from assistant turn {lost[0]} of 2"
                   + (" (earlier turns only)" if lost == [1] else ""))
            fix = "which keeps it"
        else:
            why = f"the student's template injects a default system prompt ({system!r})"
            fix = "without it (R1 protocol: no system prompt; generate and eval render the same way)"
        choice = TemplateChoice(TRAINING_TEMPLATES[family], family, f"{why}; switched to the {family} training "
                                f"template, {fix}")
    else:
        family = _family(tokenizer, None)
        choice = TemplateChoice(TRAINING_TEMPLATES[family], family,
                                f"student has no chat template; using the {family} training template")
    if lost_reasoning(tokenizer, choice.template):  # our own templates must pass the same probe
        raise AssertionError(f"training template {family} loses reasoning")
    return choice


def end_of_turn_token(tokenizer, template: str) -> str:
    """The token the template writes right after an assistant turn's content (ChatML: <|im_end|>, Llama-3:
    <|eot_id|>, R1: <｜end▁of▁sentence｜>): the token the model must learn to emit to stop."""
    marker = "distill probe end of turn"
    text = render(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], template)
    tail = text[text.rindex(marker) + len(marker):]
    candidates = set(tokenizer.all_special_tokens) | set(_added(tokenizer))
    specials = sorted((t for t in candidates if t and tail.lstrip().startswith(t)), key=len, reverse=True)
    if specials:
        return specials[0]
    if tokenizer.eos_token and tokenizer.eos_token in tail:
        return tokenizer.eos_token
    raise DistillError("chat template: no end-of-turn special token after the assistant turn; the model could never "
                       "learn to stop. Use a template that closes assistant turns with the EOS token")


def _added(tokenizer) -> list[str]:
    return [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]


def adopt_template(tokenizer, choice: TemplateChoice, why_eos: str) -> tuple[str, str]:
    """Render with `choice` from now on (it is saved with the trained model) and make the template's end-of-turn
    token the EOS, so the model stops where its turn ends. Returns (end-of-turn token, the note on a changed EOS
    or "")."""
    if choice.name != "own":
        log.warning("chat template: %s", choice.note)
    tokenizer.chat_template = choice.template
    eot = end_of_turn_token(tokenizer, choice.template)
    note = ""
    if tokenizer.eos_token != eot:
        note = f"eos {tokenizer.eos_token!r} -> end-of-turn {eot!r}"
        log.warning("%s: %s", note, why_eos)
        tokenizer.eos_token = eot
    return eot, note
