"""The OLMo/Tulu chat format: token ids and label masks of a conversation, the generation prompt, and
`olmo data tokenize --chat` writing both into token and mask files."""

from __future__ import annotations

import json

import pytest
from _tokenize_helpers import BUILTIN, BUILTIN_FILE, read_docs, write_jsonl
from tokenizers import Tokenizer

from olmo_cli.data.chat import ChatFormatError, parse_messages, render_conversation, render_prompt
from olmo_cli.data.tokenize import TokenizeOptions, tokenize
from olmo_cli.errors import UsageError

TOK = Tokenizer.from_file(str(BUILTIN_FILE))
EOS, EOS_TEXT = 0, "<|endoftext|>"
CONVERSATION = [
    ("user", "What is 2+2?"),
    ("assistant", "  4.  "),  # surrounding whitespace is stripped, as upstream does
    ("user", "And 3+3?\n"),
    ("assistant", "6."),
]


def enc(text: str) -> list[int]:
    return TOK.encode(text, add_special_tokens=False).ids


def test_two_turn_conversation_matches_a_hand_built_expectation():
    pieces: list[tuple[list[int], list[bool]]] = [([EOS], [False])]  # every example starts with EOS
    for role, content in CONVERSATION:
        header = enc(f"<|{role}|>\n")
        pieces.append((header, [False] * len(header)))
        if role == "assistant":
            body = enc(content.strip() + EOS_TEXT + "\n")
            pieces.append((body, [True] * (len(body) - 1) + [False]))
        else:
            body = enc(content.strip() + "\n")
            pieces.append((body, [False] * len(body)))
    expected_ids = [t for ids, _ in pieces for t in ids]
    expected_mask = [m for _, mask in pieces for m in mask]

    ids, mask = render_conversation(CONVERSATION, TOK, EOS, EOS_TEXT)
    assert ids == expected_ids
    assert mask == expected_mask
    # Spelled out for the first assistant turn: "4", ".", EOS count; the newline after them does not.
    answer = enc("4." + EOS_TEXT + "\n")
    assert [TOK.id_to_token(t) for t in answer] == ["4", ".", "<|endoftext|>", "Ċ"]
    start = len(enc("<|user|>\n")) + len(enc("What is 2+2?\n")) + len(enc("<|assistant|>\n")) + 1
    assert ids[start : start + 4] == answer and mask[start : start + 4] == [True, True, True, False]
    # Exactly the two answers and their EOS count for the loss.
    assert [t for t, m in zip(ids, mask, strict=True) if m] == enc("4.") + [EOS] + enc("6.") + [EOS]


def test_prompt_ends_with_the_assistant_header():
    history = CONVERSATION[:3]
    prompt = render_prompt(history, TOK, EOS, EOS_TEXT)
    ids, _ = render_conversation(history, TOK, EOS, EOS_TEXT)
    assert prompt == ids + enc("<|assistant|>\n")
    assert TOK.decode(prompt, skip_special_tokens=False).endswith("And 3+3?\n<|assistant|>\n")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "no messages"}, "no `messages` list"),
        ({"messages": []}, "no `messages` list"),
        ({"messages": ["hi"]}, "messages[0] is str"),
        ({"messages": [{"content": "x"}]}, "messages[0] has no `role`"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0] has no `content`"),
    ],
)
def test_malformed_conversations_say_what_is_wrong(record, message):
    with pytest.raises(ChatFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_messages(record)


def test_tokenize_chat_writes_tokens_and_masks(tmp_path):
    conversations = [
        {"id": "c1", "messages": [{"role": r, "content": c} for r, c in CONVERSATION]},
        {"id": "no-answer", "messages": [{"role": "user", "content": "anyone?"}]},  # nothing to learn
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Ok."}]},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", conversations)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "not a conversation"}) + "\n")
    summary = tokenize(
        [str(path), str(bad)], BUILTIN, tmp_path / "o", TokenizeOptions(chat=True, skip_bad=True)
    )
    assert summary.manifest["files"][0]["label_mask"] == "part-00000.mask.npy"
    assert summary.manifest["skipped"] == {"empty": 1, "bad": 1}
    docs = read_docs(tmp_path / "o")
    assert [d[0] for d in docs] == ["c1", f"{path}:3"]
    second = [("system", "Be brief."), ("assistant", "Ok.")]
    for (_, ids, mask), messages in zip(docs, [CONVERSATION, second], strict=True):
        want_ids, want_mask = render_conversation(messages, TOK, EOS, EOS_TEXT)
        assert ids.tolist() == want_ids and mask.tolist() == want_mask
    assert (tmp_path / "o" / "part-00000.mask.npy").stat().st_size == summary.manifest["tokens"]


def test_bos_is_refused_with_chat(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": [{"role": r, "content": c} for r, c in CONVERSATION]}]
    )
    with pytest.raises(UsageError, match="--bos does not apply to --chat"):
        tokenize([str(path)], BUILTIN, tmp_path / "o", TokenizeOptions(chat=True, bos=True))


# The chat template of OLMo 2's SFT and instruct models (their tokenizer_config.json; bos_token and
# eos_token are both <|endoftext|>), rendered by transformers itself as the reference.
OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<|system|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\\n'  + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n'  + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("generation", [False, True])
def test_the_olmo2_format_is_olmo2s_chat_template(generation):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(BUILTIN_FILE), bos_token=EOS_TEXT, eos_token=EOS_TEXT
    )
    conversation = [("system", "Be brief."), *CONVERSATION]
    if generation:
        conversation = conversation[:-1]
    messages = [{"role": role, "content": content} for role, content in conversation]
    expected = hf.apply_chat_template(
        messages, chat_template=OLMO2_TEMPLATE, tokenize=False, add_generation_prompt=generation
    )
    if generation:
        ids = render_prompt(conversation, TOK, EOS, EOS_TEXT, "olmo2")
    else:
        ids, mask = render_conversation(conversation, TOK, EOS, EOS_TEXT, "olmo2")
        assert [t for t, m in zip(ids, mask, strict=True) if m] == enc("  4.  ") + [EOS] + enc("6.") + [EOS]
    assert TOK.decode(ids, skip_special_tokens=False) == expected


def test_the_chat_format_follows_the_tokenizer(tmp_path):
    from olmo_cli.data.chat import chat_format_for

    assert chat_format_for("tokenizers/allenai_dolma2.json", 100278, 100257) == "olmo2"
    assert chat_format_for("/models/OLMo-2-1124-7B/tokenizer.json", 100278, 100257) == "olmo2"
    assert chat_format_for("tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json", 50280, 50279) == "tulu"
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": " yo "}]}],
    )
    both = {}
    for style in ("tulu", "olmo2"):
        tokenize(
            [str(path)], BUILTIN, tmp_path / style, TokenizeOptions(chat=True, chat_format=style, processes=1)
        )
        both[style] = [ids.tolist() for _, ids, _ in read_docs(tmp_path / style)]
    assert both["tulu"] == [
        render_conversation([("user", " hi "), ("assistant", " yo ")], TOK, EOS, EOS_TEXT)[0]
    ]
    assert both["olmo2"] == [
        render_conversation([("user", " hi "), ("assistant", " yo ")], TOK, EOS, EOS_TEXT, "olmo2")[0]
    ]
    assert both["tulu"] != both["olmo2"]
    with pytest.raises(UsageError, match="--chat-format"):
        tokenize(
            [str(path)], BUILTIN, tmp_path / "x", TokenizeOptions(chat=True, chat_format="llama", processes=1)
        )
