"""The model's own tokenizer (through ``tokenizers``) and chat template (through jinja2).

GGUF files carry their tokenizer as ``tokenizer.ggml.*`` metadata: a
byte-level BPE (``gpt2``: Llama 3, SmolLM2, Qwen2) or a SentencePiece BPE
(``llama``: Llama 2, TinyLlama). Both are rebuilt here as a ``tokenizers``
JSON document, which is what the package stores (a Hugging Face directory's
``tokenizer.json`` is stored as is).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from edge_runtime.llm.errors import ModelSourceError, UnsupportedModelError

__all__ = ["IncrementalDecoder", "TextTokenizer", "load_tokenizer", "tokenizer_from_gguf"]

# The pre-tokenizer regular expressions of llama.cpp's byte-level BPE variants (tokenizer.ggml.pre).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_CONTROL, _USER_DEFINED, _BYTE = 3, 4, 6


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - the llm extra
        raise UnsupportedModelError(
            "LLM tokenizers need the tokenizers package: pip install 'edge-runtime[llm]'"
        ) from exc
    return tokenizers


def load_tokenizer(tokenizer_json: str) -> Any:
    """A ``tokenizers.Tokenizer`` from its JSON document; ModelSourceError if it does not parse."""
    tk = _require_tokenizers()
    try:
        return tk.Tokenizer.from_str(tokenizer_json)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own Exception type
        raise ModelSourceError(f"the tokenizer cannot be read: {exc}") from None


def _spm_merges(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """SentencePiece BPE merges in priority order: a piece made of two pieces, ranked by its score."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[float, int, int, tuple[str, str]]] = []
    for piece, i in vocab.items():
        if types and types[i] not in (1,):  # normal pieces only
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                found.append((-float(scores[i]) if scores else i, vocab[left], vocab[right], (left, right)))
    found.sort()
    return [m for *_, m in found]


def tokenizer_from_gguf(
    get: Callable[..., Any], path: Path | str = "the GGUF file"
) -> tuple[str, dict[str, str]]:
    """The ``tokenizers`` JSON of a GGUF file's tokenizer, and its special tokens as text."""
    tk = _require_tokenizers()
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

    kind = get("tokenizer.ggml.model")
    tokens: list[str] = list(get("tokenizer.ggml.tokens") or [])
    types: list[int] = [int(t) for t in (get("tokenizer.ggml.token_type") or [])]
    if types and len(types) != len(tokens):
        raise ModelSourceError(f"{path}: tokenizer.ggml.token_type and tokens differ in length")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelSourceError(f"{path}: tokenizer.ggml.tokens lists a token twice")
    if kind == "gpt2":
        merges = []
        for m in get("tokenizer.ggml.merges") or []:
            parts = m.split(" ")
            if len(parts) != 2:
                raise ModelSourceError(f"{path}: tokenizer merge {m!r} is not two tokens")
            merges.append((parts[0], parts[1]))
        pre = get("tokenizer.ggml.pre", "default")
        ignore_merges = pre in ("llama-bpe", "llama3")
        tok = tk.Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        if pre in ("llama-bpe", "llama3", "smaug-bpe"):
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level]
            )
        elif pre in ("qwen2", "deepseek-r1-qwen"):
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level]
            )
        elif pre == "smollm":
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        else:  # "default", "gpt-2" and the like: GPT-2's own split
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
    elif kind == "llama":
        scores = [float(s) for s in (get("tokenizer.ggml.scores") or [])]
        unk_id = get("tokenizer.ggml.unknown_token_id", 0)
        tok = tk.Tokenizer(
            models.BPE(
                vocab=vocab,
                merges=_spm_merges(tokens, scores, types),
                unk_token=tokens[int(unk_id)],
                fuse_unk=True,
                byte_fallback=True,
            )
        )
        steps = [normalizers.Replace(" ", "\u2581")]
        if get("tokenizer.ggml.add_space_prefix", True):
            steps.insert(0, normalizers.Prepend("\u2581"))
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
            + (
                [decoders.Strip(content=" ", left=1, right=0)]
                if get("tokenizer.ggml.add_space_prefix", True)
                else []
            )
        )
    else:
        raise UnsupportedModelError(
            f"{path}: tokenizer model {kind!r} is not supported (gpt2 byte-level BPE and llama SentencePiece are)"
        )
    added = []
    for i, t in enumerate(types):
        if t == _CONTROL:
            added.append(AddedToken(tokens[i], special=True, normalized=False))
        elif t == _USER_DEFINED:
            added.append(AddedToken(tokens[i], special=False, normalized=False))
    if added:
        tok.add_special_tokens([a for a in added if a.special])
        tok.add_tokens([a for a in added if not a.special])
    specials = {}
    for key, name in (
        ("tokenizer.ggml.bos_token_id", "bos_token"),
        ("tokenizer.ggml.eos_token_id", "eos_token"),
    ):
        i = get(key)
        if i is not None and 0 <= int(i) < len(tokens):
            specials[name] = tokens[int(i)]
    return tok.to_str(), specials


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _raise(message: str) -> None:
    raise ValueError(f"chat template: {message}")


# Used when a model ships no chat template.
_PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class TextTokenizer:
    """Encoding, decoding and chat formatting with the model's own tokenizer and template."""

    def __init__(
        self,
        tokenizer_json: str,
        *,
        bos_token_id: int | None = None,
        eos_token_ids: Iterable[int] = (),
        add_bos: bool = False,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self._tok = load_tokenizer(tokenizer_json)
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.add_bos = add_bos and bos_token_id is not None
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self._template: Any = None

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; BOS first when the model wants one and the text does not start with it."""
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        wanted = self.add_bos if add_bos is None else add_bos
        if wanted and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text of a conversation, rendered by the model's Jinja chat template (sandboxed)."""
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise
            try:
                self._template = env.from_string(self.chat_template or _PLAIN_TEMPLATE)
            except Exception as exc:  # noqa: BLE001 - a template error is the model's
                raise ModelSourceError(f"the model's chat template does not compile: {exc}") from None
        for m in messages:
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise ValueError("each message must be an object with string 'role' and 'content'")  # noqa: TRY004
        return str(
            self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.special_tokens.get("bos_token", ""),
                eos_token=self.special_tokens.get("eos_token", ""),
            )
        )


class IncrementalDecoder:
    """Text of a growing token sequence, piece by piece, never splitting a UTF-8 character."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._text = ""

    def push(self, token_id: int) -> str:
        """The new text that token adds (empty while it ends in an incomplete character)."""
        self._ids.append(int(token_id))
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd") or not text.startswith(self._text):
            return ""
        new, self._text = text[len(self._text) :], text
        return new

    @property
    def text(self) -> str:
        return self._text
