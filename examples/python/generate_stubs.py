"""Generates the Python stubs keyward_example.py imports.

Usage: generate_stubs.py IMAGE OUT_DIR

IMAGE is the repository's protos compiled by buf into one file, imports
included (`npm run build:protos` writes dist/keyward.binpb). Writes
keyward/v1/{crypto,secrets}_pb2.py and _pb2_grpc.py, and
buf/validate/validate_pb2.py (which they import), into OUT_DIR; put OUT_DIR
on PYTHONPATH. The google/protobuf modules come with the protobuf runtime.

Why from buf's image rather than from proto/: the protos use proto3
`optional`, which protoc understands from 3.15 on, while Debian's
python3-grpc-tools bundles protoc 3.5. Read from an image, every protoc
version produces working stubs. With a recent grpcio-tools from pip this is
the same as `python3 -m grpc_tools.protoc -I proto --python_out=OUT_DIR
--grpc_python_out=OUT_DIR <the same files>`.
"""

import os
import sys

from grpc_tools import protoc

FILES = ["keyward/v1/crypto.proto", "keyward/v1/secrets.proto", "buf/validate/validate.proto"]


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    image, out = argv[1:]
    os.makedirs(out, exist_ok=True)
    # protoc.main, not `python3 -m grpc_tools.protoc`: the module adds an -I
    # flag of its own, and protoc refuses -I together with --descriptor_set_in.
    code = protoc.main(
        ["protoc", "--descriptor_set_in=" + image, "--python_out=" + out, "--grpc_python_out=" + out] + FILES
    )
    if code != 0:
        sys.stderr.write("generate_stubs: protoc failed (exit %d)\n" % code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
