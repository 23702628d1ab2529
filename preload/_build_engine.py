"""Builds ``preload._engine``: the engine's C sources behind its public header.

The cffi declarations are the public headers themselves, run through the C
preprocessor (``SS_CDEF`` keeps out the system includes), so every struct and
the counter list are defined once, in ``core/include/shardsock/``.

Used three ways:
  * ``pip install -e .`` (setup.py's ``cffi_modules``);
  * ``python3 preload/_build_engine.py`` builds the module in place;
  * ``python3 preload/_build_engine.py --sanitize DIR`` builds it with
    AddressSanitizer and UndefinedBehaviorSanitizer into DIR, for the
    sanitizer run of the engine tests.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(ROOT, "core", "include")
PUBLIC = os.path.join(INCLUDE, "shardsock")
SOURCES = sorted(glob.glob(os.path.join(ROOT, "core", "*.c")) + glob.glob(os.path.join(ROOT, "core", "wire", "*.c")))
BASE_CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-O2", "-g"]
SANITIZE_CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-O1", "-g", "-fno-omit-frame-pointer",
                   "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]

# Test harnesses receive the engine's frames in Python through this callback.
PY_CALLBACKS = """extern "Python" int ss_py_tx(void *, const uint8_t *, size_t);
extern "Python" void ss_py_neigh_learn(void *, uint32_t, const uint8_t *);
extern "Python" int ss_py_neigh_lookup(void *, uint32_t, uint8_t *);
extern "Python" void ss_py_flow_publish(void *, uint32_t, uint16_t, uint16_t, int);
extern "Python" int ss_py_flow_owner(void *, uint32_t, uint16_t, uint16_t);
extern "Python" int ss_py_forward(void *, int, const uint8_t *, size_t);
extern "Python" void ss_py_listen_publish(void *, uint16_t, int);
extern "Python" int ss_py_listen_owner(void *, uint32_t, uint16_t, uint16_t, int);
"""


# Every public header, in the order they may include each other.
PUBLIC_HEADERS = ["engine.h", "stats.h", "channel.h"]
INCLUDES = "".join("#include <shardsock/%s>\n" % h for h in PUBLIC_HEADERS)


def cdef_text():
    cc = os.environ.get("CC", "cc")
    pre = subprocess.run([cc, "-E", "-P", "-DSS_CDEF", "-I", INCLUDE, "-"], input=INCLUDES,
                         check=True, capture_output=True, text=True).stdout
    # Integer #defines vanish in the preprocessor; cffi takes them as is.
    consts = []
    for header in sorted(glob.glob(os.path.join(PUBLIC, "*.h"))):
        with open(header) as f:
            for m in re.finditer(r"^#define\s+(SS_[A-Z0-9_]+)\s+(0x[0-9a-fA-F]+|\d+)\s*(?:/\*.*\*/)?\s*$", f.read(), re.M):
                consts.append("#define %s %s" % (m.group(1), m.group(2)))
    return pre + "\n" + "\n".join(consts) + "\n" + PY_CALLBACKS


def make_builder(cflags, ldflags=(), absolute=False):
    # setuptools wants paths relative to the project; ffi.compile() runs
    # the compiler in its tmpdir and needs them absolute.
    sources = SOURCES if absolute else [os.path.relpath(s, ROOT) for s in SOURCES]
    ffi = FFI()
    ffi.cdef(cdef_text())
    ffi.set_source("preload._engine", INCLUDES,
                   sources=sources,
                   include_dirs=[INCLUDE, os.path.join(ROOT, "core")],
                   extra_compile_args=list(cflags), extra_link_args=list(ldflags))
    return ffi


ffibuilder = make_builder(BASE_CFLAGS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sanitize", metavar="DIR", help="build with ASan+UBSan into DIR")
    args = ap.parse_args()
    os.chdir(ROOT)
    if args.sanitize:
        builder = make_builder(SANITIZE_CFLAGS, ["-fsanitize=address,undefined"], absolute=True)
        out = os.path.abspath(args.sanitize)
    else:
        builder = make_builder(BASE_CFLAGS, absolute=True)
        out = os.path.join(ROOT, "preload")
    tmp = os.path.join(ROOT, "build", "cffi-asan" if args.sanitize else "cffi")
    os.makedirs(tmp, exist_ok=True)
    so = builder.compile(tmpdir=tmp, verbose=False)
    os.makedirs(out, exist_ok=True)
    dest = os.path.join(out, os.path.basename(so))
    shutil.copy2(so, dest)
    print(dest)


if __name__ == "__main__":
    sys.exit(main())
