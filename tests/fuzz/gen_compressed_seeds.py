#!/usr/bin/python3
"""Write the compressed-Celery seeds of tests/fuzz/corpus/msg from the real kombu SQS body
celery_kombu_moto_zlib_b64.txt (written by tests/support/celery_publish.py --compression zlib
against moto): the same envelope with its body replaced by kombu.compression.compress output.
test_msg.c gives each seed its expected reason. Run with Debian's /usr/bin/python3 (kombu 5.2):

    /usr/bin/python3 tests/fuzz/gen_compressed_seeds.py
"""
import base64
import json
import os

from kombu.compression import compress, decompress

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "msg")
CAP = 1024 * 1024  # DSW_MSG_MAX_INFLATED


def envelope():
    with open(os.path.join(HERE, "celery_kombu_moto_zlib_b64.txt")) as f:
        return json.loads(base64.b64decode(f.read()))


def inner(env):
    """The serialized Celery body [args, kwargs, embed] of the real message."""
    return decompress(base64.b64decode(env["body"]), env["headers"]["compression"])


def write(name, env, payload, method, header=None):
    data, ctype = compress(payload, method)
    env = dict(env, body=base64.b64encode(data).decode())
    env["headers"] = dict(env["headers"], compression=header or ctype)
    with open(os.path.join(HERE, name), "w", newline="") as f:
        f.write(base64.b64encode(json.dumps(env).encode()).decode())


def main():
    env = envelope()
    body = inner(env)
    # The alias kombu's decoder also accepts, in the header itself.
    write("celery_zlib_alias_b64.txt", env, body, "zlib", header="zlib")
    # Inflates to exactly the cap (JSON padded with spaces): accepted.
    write("celery_zlib_at_cap_b64.txt", env, body + b" " * (CAP - len(body)), "zlib")
    # One byte more: too_large while inflating.
    write("zlib_over_cap_b64.txt", env, body + b" " * (CAP + 1 - len(body)), "zlib")
    # A bomb: 16 MiB of spaces in ~16 KiB.
    write("zlib_bomb_b64.txt", env, body + b" " * (16 * CAP), "zlib")
    # Real bz2 and lzma from kombu: unsupported_compression.
    write("compressed_bz2_b64.txt", env, body, "bzip2")
    write("compressed_lzma_b64.txt", env, body, "lzma")


if __name__ == "__main__":
    main()
