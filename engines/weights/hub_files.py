"""What to fetch from a Hugging Face repo: the reference a user types, and the files a model needs.

`ORG/NAME[@REVISION][:QUANT]`: the revision is a branch, tag or commit (default "main"); QUANT
names one GGUF quantization of a GGUF repo (`bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M`).

Only top-level files are fetched: weights (safetensors, or npz for whisper checkpoints, or the
one GGUF file of the named quant), configs, tokenizer and chat template files — and the
settings of sentence-transformers modules (`1_Pooling/config.json`: an embedder's pooling).
Never `*.bin` / `*.pth` / `*.pt` (pickles, and duplicates of the safetensors), other quants, or
other sub-folders (`original/`, `onnx/`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_REF = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
    r"(?:@(?P<revision>[\w./-]+?))?(?::(?P<quant>[A-Za-z0-9_.-]+))?$"
)
_CONFIG_FILES = re.compile(r"\.(json|jinja|txt|model|tiktoken)$")
_SKIPPED_JSON = ("pytorch_model.bin.index.json", "consolidated.safetensors.index.json")
# sentence-transformers modules' settings (`1_Pooling/config.json`: how an embedder pools)
_MODULE_CONFIG = re.compile(r"^\d+_[A-Za-z]+/config\.json$")


@dataclass(frozen=True)
class RepoRef:
    repo_id: str
    revision: str = "main"
    quant: str | None = None

    @classmethod
    def parse(cls, text: str) -> RepoRef | None:
        """The reference `text` names, or None when it is not shaped like a repo id."""
        match = _REF.match(text)
        if match is None or text.startswith((".", "/", "~")):
            return None
        return cls(match["repo"], match["revision"] or "main", match["quant"])

    def __str__(self) -> str:
        revision = "" if self.revision == "main" else f"@{self.revision}"
        return f"{self.repo_id}{revision}{f':{self.quant}' if self.quant else ''}"


def gguf_quants(files: list[str]) -> list[str]:
    """The quantizations a GGUF repo offers, from its file names ("Q4_K_M", "F16", ...)."""
    found = set()
    for name in files:
        if "/" not in name and name.lower().endswith(".gguf"):
            match = re.search(r"[.-]((?:I?Q\d|F16|F32|BF16)[A-Za-z0-9_]*)\.gguf$", name, re.I)
            if match:
                found.add(match[1].upper())
    return sorted(found)


def needed_files(files: list[str], quant: str | None) -> list[str]:
    """The files of a repo listing that serving it needs; ValueError, saying what was found,
    when the repo holds nothing mlxd can serve."""
    top = [name for name in files if "/" not in name]
    if quant is not None:
        ggufs = [n for n in top if n.lower().endswith(".gguf") and quant.lower() in n.lower()]
        if not ggufs:
            offered = ", ".join(gguf_quants(files)) or "no GGUF files"
            raise ValueError(f"no GGUF file for quant {quant!r}; the repo offers: {offered}")
        return sorted(ggufs[:1])
    weights = [n for n in top if n.endswith((".safetensors", ".npz"))]
    if any(n.startswith("model") for n in weights):  # mistral repos also ship consolidated.*
        weights = [n for n in weights if not n.startswith("consolidated")]
    if not weights:
        quants = gguf_quants(files)
        if quants:
            raise ValueError(
                f"a GGUF repo: name a quant after a colon, REPO:{quants[0]} "
                f"(offered: {', '.join(quants)})"
            )
        shown = ", ".join(sorted(files)[:8]) + (", ..." if len(files) > 8 else "")
        raise ValueError(f"no safetensors, npz or GGUF weights (found: {shown or 'no files'})")
    configs = [n for n in top if _CONFIG_FILES.search(n) and n not in _SKIPPED_JSON]
    modules = [n for n in files if _MODULE_CONFIG.match(n)]
    return sorted({*weights, *configs, *modules})
