"""Keyward from Python with grpcio: encrypt, decrypt, sign, verify and read a
secret over mutual TLS, with typed stubs generated from the repository's protos.

Usage (every option also reads the environment variable in brackets):

  keyward_example.py [--url URL] [--ca PEM] [--cert PEM] [--key PEM]
                     [--encrypt-key NAME] [--sign-key NAME] [--secret NAME]

  --url          [KEYWARD_URL]          https://127.0.0.1:8443 (or host:port)
  --ca           [KEYWARD_CA]           .keyward/pki/ca.crt
  --cert         [KEYWARD_CERT]         .keyward/pki/service.crt
  --key          [KEYWARD_KEY]          .keyward/pki/service.key
  --encrypt-key  [KEYWARD_ENCRYPT_KEY]  keys/demo (purpose ENCRYPT_DECRYPT)
  --sign-key     [KEYWARD_SIGN_KEY]     keys/demo-signing (purpose SIGN_VERIFY)
  --secret       [KEYWARD_SECRET]       secrets/demo/dev/api-token

The defaults are the development files `npm start` writes, relative to the
repository root. The stubs (keyward/v1/crypto_pb2*.py, secrets_pb2*.py and
buf/validate/validate_pb2.py) must be importable: see README.md next to this
file. Prints one line per call; when a call fails or an answer does not check
out, says so on stderr (for a failed call: the RPC, status code and message)
and exits 1.
"""

import argparse
import os
import sys

import grpc

from keyward.v1 import crypto_pb2, crypto_pb2_grpc, secrets_pb2, secrets_pb2_grpc

TIMEOUT_SECONDS = 30


class Failed(Exception):
    """A call failed, or its answer did not check out."""


def call(name, rpc, request):
    """rpc(request); a failed call becomes Failed naming the RPC, the status code and its message."""
    try:
        return rpc(request, timeout=TIMEOUT_SECONDS)
    except grpc.RpcError as err:
        raise Failed("%s failed: %s: %s" % (name, err.code().name, err.details()))


def options(argv):
    parser = argparse.ArgumentParser(description="Keyward's crypto and secrets calls from Python.")

    def option(flag, variable, default, help):
        parser.add_argument(flag, default=os.environ.get(variable, default), help="%s (env %s)" % (help, variable))

    option("--url", "KEYWARD_URL", "https://127.0.0.1:8443", "server URL or host:port")
    option("--ca", "KEYWARD_CA", ".keyward/pki/ca.crt", "CA certificate the server's certificate chains to, PEM")
    option("--cert", "KEYWARD_CERT", ".keyward/pki/service.crt", "client certificate, PEM")
    option("--key", "KEYWARD_KEY", ".keyward/pki/service.key", "client private key, PEM")
    option("--encrypt-key", "KEYWARD_ENCRYPT_KEY", "keys/demo", "key of purpose ENCRYPT_DECRYPT")
    option("--sign-key", "KEYWARD_SIGN_KEY", "keys/demo-signing", "key of purpose SIGN_VERIFY")
    option("--secret", "KEYWARD_SECRET", "secrets/demo/dev/api-token", "secret with an ENABLED version")
    return parser.parse_args(argv)


def target(url):
    """host:port for grpc, from `https://host:port` or `host:port`."""
    if url.startswith("https://"):
        url = url[len("https://"):]
    return url.rstrip("/")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def run(args, channel):
    crypto = crypto_pb2_grpc.CryptoServiceStub(channel)
    secrets = secrets_pb2_grpc.SecretsServiceStub(channel)
    message = b"hello from examples/python"
    # Authenticated, not encrypted: Decrypt needs the very same bytes.
    associated_data = b"order-42"

    encrypted = call("Encrypt", crypto.Encrypt, crypto_pb2.EncryptRequest(
        name=args.encrypt_key, plaintext=message, associated_data=associated_data))
    print("encrypt  %s: %d bytes -> %d bytes of ciphertext" % (encrypted.key_version, len(message), len(encrypted.ciphertext)))

    # Decrypt names the key, not a version: the version is inside the ciphertext.
    decrypted = call("Decrypt", crypto.Decrypt, crypto_pb2.DecryptRequest(
        name=args.encrypt_key.split("/versions/")[0], ciphertext=encrypted.ciphertext, associated_data=associated_data))
    if decrypted.plaintext != message:
        raise Failed("Decrypt returned other bytes than were encrypted")
    print("decrypt  %s: round trip ok" % decrypted.key_version)

    signed = call("Sign", crypto.Sign, crypto_pb2.SignRequest(name=args.sign_key, message=message))
    print("sign     %s: %d bytes of signature" % (signed.key_version, len(signed.signature)))

    # Verify with the version that signed, so it still works after a rotation.
    verified = call("Verify", crypto.Verify, crypto_pb2.VerifyRequest(
        name=signed.key_version, message=message, signature=signed.signature))
    if not verified.valid:
        raise Failed("Verify: the signature is not valid")
    print("verify   %s: valid" % verified.key_version)

    name = args.secret if "/versions/" in args.secret else args.secret + "/versions/latest"
    accessed = call("AccessSecretVersion", secrets.AccessSecretVersion, secrets_pb2.AccessSecretVersionRequest(name=name))
    print("access   %s: %d bytes (value not shown)" % (accessed.name, len(accessed.payload.data)))


def main(argv):
    args = options(argv)
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca), private_key=read(args.key), certificate_chain=read(args.cert)
        )
    except OSError as err:
        sys.stderr.write("keyward_example: %s (run from the repository root after npm start, or set --ca/--cert/--key)\n" % err)
        return 1
    # The dev server certificate names localhost and 127.0.0.1, which grpcio
    # checks against the target's host.
    with grpc.secure_channel(target(args.url), credentials) as channel:
        try:
            run(args, channel)
        except Failed as err:
            sys.stderr.write("keyward_example: %s\n" % err)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
