"""Opt-in (MLXD_OPTIN=1): gemma-3-270m, imported by mlxd from its PyPI GGUF (Q4_K_M, packaged as
`gemma3-270m`), continues "The capital of France is" as llama.cpp does, greedy, through the real
server's /v1/completions (the chat engine on its own thread, the official SDK in strict mode).

The goldens were made once with llama.cpp through llama-cpp-python 0.3.36 (its vendored
llama.cpp, ggml 0.25.3), built from the sdist, CPU only, on x86_64 with gcc 12.2:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BLAS=OFF \\
      -DLLAVA_BUILD=OFF" pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
    python golden.py gemma-3-270m-q4_k_m.gguf 1   # the PyPI file; F16 KV cache (the default)
    python golden.py gemma-3-270m-f32.gguf 0      # the same weights in F32; F32 KV cache

with golden.py:

    import sys
    from llama_cpp import Llama

    path, kv = sys.argv[1], int(sys.argv[2])  # kv: 1 = F16 KV cache, 0 = F32
    llm = Llama(path, n_ctx=256, n_threads=2, type_k=kv, type_v=kv, logits_all=True,
                verbose=False)
    ids = llm.tokenize(b"The capital of France is")  # BOS added, as llama.cpp adds it
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0):
        out.append(token)
        if len(out) == 32:
            break
    print(ids, out, repr(llm.detokenize(out).decode()))

gemma-3-270m-f32.gguf is the PyPI file with every tensor through `gguf.quants.dequantize` (gguf
0.19.0) and its metadata copied by `gguf.GGUFWriter`: the weights mlxd's importer produces.

What they show: llama.cpp's CPU matmuls on Q4_K weights quantize the activations to 8 bits, so
its logits on the Q4_K_M file sit 0.1-0.3 (mean over the vocabulary; the logits' spread is ~4.5)
from float arithmetic on the same weights; mlxd computes in float32. The two continuations agree
for 15 tokens; at the 16th llama.cpp's top two logits are 0.003 apart ("." against " and") and
they part there. On the F32 file llama.cpp's logits and mlxd's agree to ~0.003 and all 32 greedy
tokens are the same: dequantization, norms stored as 1 + w, tensor names, both rope bases, the
attention scale, the sliding windows and the SentencePiece tokenizer are llama.cpp's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engines.weights.embedded import GEMMA3_270M, ensure_embedded_llm
from engines.weights.store import ModelStore
from server.app import create_app
from server.settings import Settings
from tests.helpers import OPEN_CLIENTS, sdk_client
from tests.servers import serve

pytestmark = pytest.mark.optin

PROMPT = "The capital of France is"
LLAMA_CPP_PROMPT_IDS = [2, 818, 5279, 529, 7001, 563]
# llama.cpp on the PyPI Q4_K_M file (F16 KV cache): the first 15 tokens, before its near-tie.
Q4_K_M_IDS = [506, 5279, 529, 506, 2891, 529, 7001, 236761, 1030, 563, 506, 7488, 3207, 528, 7001]
# llama.cpp on the same weights in F32 (F32 KV cache): 32 tokens.
F32_IDS = [
    *Q4_K_M_IDS,
    *[532, 506, 1855, 7488, 3207, 528, 3879, 236761, 1030, 563, 5628, 528, 506, 6029, 529, 506],
    2891,
]
F32_TEXT = (
    " the capital of the country of France. It is the largest city in France and the second"
    " largest city in Europe. It is located in the middle of the country"
)


@pytest.fixture(scope="module")
def gemma_dir() -> Any:
    settings = Settings(model=GEMMA3_270M.name)
    return ensure_embedded_llm(ModelStore(settings.home), dequantize=True, model=GEMMA3_270M)


@pytest.fixture(scope="module")
def completion(gemma_dir: Any) -> Iterator[Any]:
    """One greedy /v1/completions request of 32 tokens, with each token's text (logprobs)."""
    with serve(create_app(Settings(model=GEMMA3_270M.name))) as url:
        client = sdk_client(url)
        yield client.completions.create(
            model=GEMMA3_270M.name, prompt=PROMPT, max_tokens=32, temperature=0, logprobs=1
        )
        OPEN_CLIENTS.remove(client)
        client.close()


@pytest.fixture(scope="module")
def tokenizer(gemma_dir: Any) -> Any:
    """The tokenizer the importer rebuilt from the GGUF (what the engine loads)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(gemma_dir / "tokenizer.json"))


def test_the_rebuilt_tokenizer_gives_llama_cpps_ids(tokenizer: Any) -> None:
    assert tokenizer.encode(PROMPT).ids == LLAMA_CPP_PROMPT_IDS
    assert tokenizer.decode(F32_IDS) == F32_TEXT


def test_the_server_continues_as_llama_cpp(tokenizer: Any, completion: Any) -> None:
    pieces = [tokenizer.decode([i]) for i in F32_IDS]
    [choice] = completion.choices
    assert completion.usage.prompt_tokens == len(LLAMA_CPP_PROMPT_IDS)
    assert choice.logprobs.tokens[: len(Q4_K_M_IDS)] == pieces[: len(Q4_K_M_IDS)]
    assert choice.logprobs.tokens == pieces
    assert choice.text == F32_TEXT
