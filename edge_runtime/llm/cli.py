"""``edge llm``: convert a language model to a package, run a prompt, chat in the terminal.

::

    edge llm convert SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2.edgepkg --sign dev.key
    edge llm run smollm2.edgepkg --prompt "Write a haiku about the sea" --chat
    edge llm chat smollm2.edgepkg --temperature 0.7 --top-p 0.9
    edge llm fits smollm2.edgepkg --context 4096         # memory and decode ceiling on each board
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        metavar="N",
        help="most tokens to generate per answer (default 256; 0: until the context is full)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 (the default) is greedy decoding",
    )
    g.add_argument(
        "--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest tokens (0: all)"
    )
    g.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        metavar="P",
        help="sample among the likeliest tokens whose probabilities add up to P (nucleus; 1: all)",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="divide the logits of tokens already seen by R (1: off; 1.1 is a common value)",
    )
    g.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop when the answer contains TEXT (repeatable; the model's end token always stops)",
    )
    r = p.add_argument_group("runtime")
    r.add_argument("--threads", type=int, help="native GEMM threads (default: up to 4, the CPUs there are)")
    r.add_argument(
        "--context",
        type=int,
        metavar="N",
        help="tokens of context (default: the model's); bounds the KV cache allocated up front",
    )
    r.add_argument(
        "--kv-dtype",
        choices=("float16", "float32"),
        default="float32",
        help="KV cache element type (default float32; float16 halves its memory but numpy attention on it is slower)",
    )
    r.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        metavar="KEY_OR_DIR",
        help="require a package signed by this public key (or a key in this directory); repeatable",
    )
    r.add_argument(
        "--profile",
        metavar="NAME",
        help="refuse up front when the weights and the context's KV cache would not fit this device "
        "profile's memory (edge profile --list names them; see edge llm fits)",
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``edge llm`` and its subcommands to the ``edge`` parser."""
    llm = sub.add_parser(
        "llm",
        help="small language models: convert (GGUF, Hugging Face) to a package, run, chat",
        description="Small language models of the Llama family (Llama 3.x, SmolLM2, TinyLlama, Qwen2) "
        "on the native INT8 kernels. See docs/llm.md.",
    )
    llm.set_defaults(func=lambda args: (llm.print_help(), 2)[1])
    cmds = llm.add_subparsers(dest="llm_command", metavar="COMMAND")

    convert = cmds.add_parser(
        "convert",
        help="convert a GGUF file or Hugging Face directory to a signed LLM package",
        description="Read SRC (a .gguf file, or a directory with config.json, *.safetensors and "
        "tokenizer.json), quantize its weights, and write a package with the tokenizer, the chat "
        "template and self-test tokens.",
    )
    convert.add_argument(
        "source", metavar="SRC", type=Path, help="a .gguf file or a Hugging Face model directory"
    )
    convert.add_argument(
        "--out", type=Path, required=True, metavar="MODEL.edgepkg", help="the package to write"
    )
    convert.add_argument(
        "--weights",
        choices=("int8", "int4", "f16"),
        default="int8",
        help="int8 per output channel (default), int4 in groups (half the package; "
        "expanded to int8 at load), or f16 (a float reference, no quantization)",
    )
    convert.add_argument(
        "--group-size", type=int, default=32, metavar="G", help="int4 group size (default 32)"
    )
    convert.add_argument(
        "--sign", type=Path, metavar="KEY", help="private key (PEM) to sign the package with"
    )
    convert.add_argument("--name", help="package name (default: the output file's name)")
    convert.add_argument("--version", default="1", help="package version (default 1)")
    convert.add_argument(
        "--context", type=int, metavar="N", help="largest context the package declares (default: the model's)"
    )
    convert.add_argument(
        "--smoothing",
        type=float,
        default=0.7,
        metavar="ALPHA",
        help="SmoothQuant migration strength folded into the weights before int8/int4 "
        "quantization (default 0.7; 0 turns it off)",
    )
    convert.add_argument(
        "--profile",
        metavar="NAME",
        help="refuse before converting when the model and its context (--context, default the model's) "
        "would not fit this device profile's memory (edge llm fits shows what does)",
    )
    convert.set_defaults(func=_cmd_convert)

    fits = cmds.add_parser(
        "fits",
        help="what fits on each device profile: memory for the weights and the context, decode ceiling",
        description="For MODEL (an LLM package, a .gguf file, a Hugging Face directory or a reference "
        "model name) on each device profile: the memory its int8 weights and the KV cache of --context "
        "tokens take against the board's memory (less the system's reserve), the largest context that "
        "fits, and the decode tokens/s ceiling = memory bandwidth / bytes read per token. Without MODEL: "
        "the reference models (SmolLM2, Qwen2.5, TinyLlama, Llama 3.2) against every profile. The "
        "bandwidth figures are the boards' spec peak DRAM bandwidth, NOT measured on the boards: a CPU "
        "reaches a fraction of it, so the ceiling is an upper bound.",
    )
    fits.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="an LLM package, .gguf, Hugging Face directory or reference model name (default: all references)",
    )
    fits.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME",
        help="only this device profile (repeatable; default: every profile with a known memory size)",
    )
    fits.add_argument(
        "--context", type=int, default=2048, metavar="N", help="tokens of context to hold (default 2048)"
    )
    fits.add_argument(
        "--kv-dtype",
        choices=("float16", "float32"),
        default="float32",
        help="KV cache element type (default float32, the runtime's default)",
    )
    fits.add_argument(
        "--memory-mb",
        type=int,
        metavar="MIB",
        help="the board's memory instead of the profile's (its smallest variant), e.g. 8192 for an 8 GB Pi 5",
    )
    fits.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fits.set_defaults(func=_cmd_fits)

    run = cmds.add_parser(
        "run",
        help="complete one prompt, streaming the answer to the terminal",
        description="Generate from MODEL for --prompt; with --chat the prompt is a user message "
        "formatted by the model's chat template.",
    )
    run.add_argument("package", metavar="MODEL.edgepkg", type=Path, help="an LLM package (edge llm convert)")
    run.add_argument("--prompt", required=True, help="the prompt text ('-' reads it from stdin)")
    run.add_argument("--chat", action="store_true", help="treat the prompt as a user message of a chat")
    run.add_argument("--system", help="system message (with --chat)")
    run.add_argument("--stats", action="store_true", help="print time to first token and tokens/s to stderr")
    _sampling_options(run)
    run.set_defaults(func=_cmd_run)

    chat = cmds.add_parser(
        "chat",
        help="chat with a model in the terminal (the conversation is kept; /reset, /quit)",
        description="An interactive chat: each line you type is a user message; the answer streams "
        "back. /reset forgets the conversation, /quit (or end of input) leaves.",
    )
    chat.add_argument("package", metavar="MODEL.edgepkg", type=Path, help="an LLM package (edge llm convert)")
    chat.add_argument("--system", help="system message at the start of the conversation")
    chat.add_argument(
        "--stats", action="store_true", help="print time to first token and tokens/s after each answer"
    )
    _sampling_options(chat)
    chat.set_defaults(func=_cmd_chat)


def _cmd_convert(args: argparse.Namespace) -> int:
    from edge_runtime.llm import convert
    from edge_runtime.llm.sources import read_source
    from edge_runtime.package import load_private_key

    key = load_private_key(args.sign) if args.sign else None
    start = time.monotonic()
    source: Any = args.source
    if args.profile:
        from device_profiles import get_profile
        from edge_runtime.llm.fits import check_fits

        profile = get_profile(args.profile)
        source = read_source(args.source)
        check_fits(source.config, profile, args.context)
    info = convert(
        source,
        args.out,
        weights=args.weights,
        group_size=args.group_size,
        signing_key=key,
        name=args.name,
        version=args.version,
        context=args.context,
        smoothing=args.smoothing,
    )
    m = info.manifest
    signed = f"signed by {info.signer}" if info.signer else "UNSIGNED"
    arch = m.provenance.get("architecture")
    print(
        f"{info.path}: {m.name} {m.version} ({arch}, {args.weights}), {info.size / 2**20:.1f} MiB, {signed}, "
        f"{time.monotonic() - start:.1f} s"
    )
    return 0


def _load(args: argparse.Namespace) -> Any:
    from edge_runtime.llm import load
    from edge_runtime.package import TrustStore

    trust = TrustStore.load(*args.trust) if args.trust else None
    return load(
        args.package,
        threads=args.threads,
        context=args.context,
        kv_dtype=args.kv_dtype,
        trust_store=trust,
        profile=args.profile,
    )


def _generate(model: Any, prompt: Any, args: argparse.Namespace) -> tuple[str, str]:
    """Stream one answer to stdout; (its text, finish reason)."""
    start = time.perf_counter()
    first = None
    parts = []
    reason = "length"
    n = 0
    for ev in model.stream(
        prompt,
        max_new_tokens=args.max_tokens or None,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        repetition_penalty=args.repetition_penalty,
    ):
        if first is None:
            first = time.perf_counter() - start
        n += 1
        parts.append(ev.text)
        sys.stdout.write(ev.text)
        sys.stdout.flush()
        reason = ev.finish_reason or reason
    sys.stdout.write("\n")
    if args.stats:
        total = time.perf_counter() - start
        decode = total - (first or 0.0)
        rate = (n - 1) / decode if n > 1 and decode > 0 else 0.0
        print(
            f"[{n} tokens, first after {1000 * (first or 0):.0f} ms, {rate:.1f} tokens/s, {reason}]",
            file=sys.stderr,
        )
    return "".join(parts), reason


def _cmd_run(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    with _load(args) as model:
        if args.chat:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
                {"role": "user", "content": prompt}
            ]
            prompt = model.apply_chat_template(messages)
        _generate(model, prompt, args)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from edge_runtime.llm.errors import ContextLengthError

    with _load(args) as model:
        system = [{"role": "system", "content": args.system}] if args.system else []
        messages = list(system)
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line or line.strip() == "/quit":
                return 0
            text = line.strip()
            if not text:
                continue
            if text == "/reset":
                messages = list(system)
                continue
            messages.append({"role": "user", "content": text})
            try:
                answer, _ = _generate(model, model.apply_chat_template(messages), args)
            except ContextLengthError as exc:
                print(f"[{exc}; the conversation is reset]", file=sys.stderr)
                messages = list(system)
                continue
            messages.append({"role": "assistant", "content": answer})


def _cmd_fits(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from device_profiles import PROFILES, get_profile
    from edge_runtime.llm.fits import REFERENCE_MODELS, fit, model_config

    profiles = [get_profile(n) for n in args.profile] or [
        p for p in PROFILES.values() if p.memory_mb or args.memory_mb
    ]
    models = [model_config(args.model)] if args.model else list(REFERENCE_MODELS)
    itemsize = np.dtype(args.kv_dtype).itemsize
    fits = [
        fit(m, p, min(args.context, m.max_context), itemsize, args.memory_mb)
        for m in models
        for p in profiles
    ]
    if args.json:
        print(json.dumps([f.to_dict() for f in fits], indent=2))
        return 0
    mib = 1 << 20
    print("profile            memory  usable  bandwidth (spec, not measured)")
    for p in profiles:
        f = next(x for x in fits if x.profile == p.name)
        bw = f"{f.bandwidth_gbs:.1f} GB/s" if f.bandwidth_gbs else "unknown"
        print(f"{p.name:18} {f.memory_bytes // mib:5} M {f.usable_bytes // mib:5} M  {bw}")
    print()
    header = f"{'model':16} {'weights':>8} {'KV/1k tok':>9}  " + "  ".join(f"{p.name:>18}" for p in profiles)
    print(header)
    for m in models:
        row = [x for x in fits if x.model == m.name]
        cells = []
        for f in row:
            if not f.fits:
                cells.append(f"{'max ctx ' + str(f.max_context) if f.max_context else 'does not fit':>18}")
            elif f.decode_ceiling_tok_s is None:
                cells.append(f"{'fits':>18}")
            else:
                cells.append(f"{'fits, <=' + format(f.decode_ceiling_tok_s, '.0f') + ' tok/s':>18}")
        kv = row[0].kv_bytes_per_token * 1000 / mib
        print(f"{m.name[:16]:16} {row[0].weight_bytes / mib:6.0f} M {kv:7.1f} M  " + "  ".join(cells))
    print()
    print(
        f"context {args.context} tokens (capped at each model's), KV cache {args.kv_dtype}; int8 weights in "
        "memory (int4 packages are widened to int8 at load); usable = memory less max(384 MiB, 20%); "
        "tok/s = spec bandwidth / weight bytes read per token, an upper bound at batch 1 (see docs/llm.md)"
    )
    return 0
