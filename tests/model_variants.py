"""Other GGUF models made from one we have, since no model hub is reachable: a copy with other weight
types (``llama_model_quantize``) or with another chat template (the ``gguf`` package rewrites the
metadata and copies the tensors untouched). Made once, kept in a cache directory.

    from tests.model_variants import requantized, with_chat_template, PLAIN_TEMPLATE
    q4k = requantized(source, "Q4_K_M")                      # Path of a Q4_K_M copy
    plain = with_chat_template(q4k, PLAIN_TEMPLATE, "plain")  # the same weights, another template

``python -m tests.model_variants [Q4_K_M|Q4_0] [--template plain]`` prints the path of such a copy, for
``TOKENSPOUT_TEST_MODEL=$(...) pytest``.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp as C

from engine.llama import init_backend
from models import ensure_model

# TOKENSPOUT_VARIANT_CACHE overrides it; files are named after their source and what was changed.
CACHE = Path(os.environ.get("TOKENSPOUT_VARIANT_CACHE") or Path.home() / ".cache/tokenspout/variants")

FTYPES = {
    "Q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": C.LLAMA_FTYPE_MOSTLY_Q4_1,
    "Q4_K_M": C.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0,
}

# A template unlike ChatML (the default model's), with plain-text role markers, ending turns with the
# model's EOS token: the server must take whatever template a GGUF file carries.
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] | trim + '\\n\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


def _stamp(source: Path, change: str) -> str:
    """A name that changes when the source file or the change does."""
    stat = source.stat()
    digest = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{change}".encode())
    return f"{source.stem}.{digest.hexdigest()[:10]}"


def _publish(tmp: Path, final: Path) -> Path:
    # rename is atomic: a concurrent maker (another test session) never sees a half-written file
    tmp.replace(final)
    return final


def requantized(source: Path | None = None, ftype: str = "Q4_K_M") -> Path:
    """A copy of ``source`` (default: the default model) with weights of type ``ftype``, made by
    llama.cpp's quantizer with ``allow_requantize`` (the source is already quantized)."""
    source = source or ensure_model()
    final = CACHE / f"{_stamp(source, ftype)}.{ftype}.gguf"
    if final.exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(f".{os.getpid()}.tmp")
    params = C.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    init_backend()  # llama.cpp's log lines go to Python's logging, as in the server
    code = C.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize failed ({code}) for {source} -> {ftype}")
    return _publish(tmp, final)


def with_chat_template(source: Path, template: str, name: str) -> Path:
    """A copy of ``source`` whose ``tokenizer.chat_template`` is ``template`` (tensors copied as
    they are, by the gguf package's own metadata rewriter). ``name`` only makes the file name readable."""
    final = CACHE / f"{_stamp(source, template)}.{name}.gguf"
    if final.exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(f".{os.getpid()}.tmp")
    template_file = final.with_suffix(f".{os.getpid()}.jinja")
    template_file.write_text(template)
    try:
        rewriter = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(source), str(tmp)]
        subprocess.run(
            [*rewriter, "--force", "--chat-template-file", str(template_file)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
    finally:
        template_file.unlink(missing_ok=True)
    return _publish(tmp, final)


def with_tokens(source: Path, renamed: dict[int, str], template: str, name: str) -> Path:
    """A copy of ``source`` in which the tokens ``renamed`` are spelled anew (as user-defined tokens,
    the type Qwen gives ``<think>`` and ``<tool_call>``) and whose chat template is ``template``: a
    stand-in for a model whose markers are tokens of their own. The weights stay as they are, so the
    model does not know what the new spellings mean; tests steer it (logit_bias, grammars)."""
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    change = f"{sorted(renamed.items())}|{template}"
    final = CACHE / f"{_stamp(source, change)}.{name}.gguf"
    if final.exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(f".{os.getpid()}.tmp")
    reader = gguf.GGUFReader(source)
    tokens = list(reader.fields[gguf.Keys.Tokenizer.LIST].contents())
    types = list(reader.fields[gguf.Keys.Tokenizer.TOKEN_TYPE].contents())
    for token, text in renamed.items():
        tokens[token], types[token] = text, gguf.TokenType.USER_DEFINED
    array, string, int32 = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, gguf.GGUFValueType.INT32
    changes = {
        gguf.Keys.Tokenizer.LIST: MetadataDetails(array, tokens, sub_type=string),
        gguf.Keys.Tokenizer.TOKEN_TYPE: MetadataDetails(array, types, sub_type=int32),
        gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(string, template),
    }
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, changes, [])
    return _publish(tmp, final)


# Thinking models: tokens of the default model's vocabulary (unused control tokens) renamed to be the
# markers, so that they are tokens of their own, as in Qwen3's vocabulary.
THINKING_TOKENS = {11: "<think>", 12: "</think>", 13: "<tool_call>", 14: "</tool_call>"}
TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


def thinking_model(source: Path | str, template: str) -> Path:
    """``source`` under the real chat template ``fixtures/chat_templates/<template>.jinja``, with
    the thought and tool-call markers as tokens (THINKING_TOKENS)."""
    text = (TEMPLATES / f"{template}.jinja").read_text()
    return with_tokens(Path(source), THINKING_TOKENS, text, template)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("ftype", nargs="?", default="Q4_K_M", choices=sorted(FTYPES))
    parser.add_argument("--template", choices=["plain"], help="also swap the chat template")
    args = parser.parse_args()
    path = requantized(ftype=args.ftype)
    if args.template == "plain":
        path = with_chat_template(path, PLAIN_TEMPLATE, "plain")
    print(path)


if __name__ == "__main__":
    main()
