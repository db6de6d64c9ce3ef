"""Drives Keyward and a KMIP server with the same Python client process (bench --peer).

Not run by hand: test/bench/lib/peer.ts starts both servers, then runs this
with a JSON plan on stdin and reads one JSON line per measured phase from
stdout. Each phase keeps `concurrency` threads calling one server, each
thread on a connection of its own, for a warm-up and then the measured
window; every answer is checked (Decrypt gives the plaintext back, a
signature has the key's length), a wrong one counting as an error. Server
CPU per call comes from /proc, for the server's own processes only.

Keyward is called through grpcio stubs generated from the protos (as
examples/python does); the KMIP server through PyKMIP's client, with the
request payloads built here for AES-GCM, whose tag PyKMIP 0.10's
high-level client does not pass on.
"""

import json
import os
import sys
import threading
import time

import grpc
from kmip.core import enums
from kmip.core.messages import payloads
from kmip.core.messages.contents import Operation
from kmip.core.messages import messages
from kmip.pie.client import ProxyKmipClient

M = enums.CryptographicUsageMask
GCM = {
    "block_cipher_mode": enums.BlockCipherMode.GCM,
    "tag_length": 16,
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
}
PSS = {
    "padding_method": enums.PaddingMethod.PSS,
    "hashing_algorithm": enums.HashingAlgorithm.SHA_256,
    "cryptographic_algorithm": enums.CryptographicAlgorithm.RSA,
    "digital_signature_algorithm": enums.DigitalSignatureAlgorithm.SHA256_WITH_RSA_ENCRYPTION,
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class WrongAnswer(Exception):
    pass


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLOCK_TICKS


def kmip_client(target):
    pki = target["pki"]
    client = ProxyKmipClient(
        hostname="127.0.0.1",
        port=target["port"],
        cert=pki["cert"],
        key=pki["key"],
        ca=pki["ca"],
        ssl_version="PROTOCOL_TLSv1_2",
        config_file="/dev/null",
        # GCM's tag travels in Encrypt and Decrypt payloads from KMIP 1.4 on.
        kmip_version=enums.KMIPVersion.KMIP_1_4,
    )
    client.open()
    return client


def kmip_call(client, operation, payload):
    proxy = client.proxy
    request = proxy._build_request_message(None, [messages.RequestBatchItem(operation=Operation(operation), request_payload=payload)])
    item = proxy._send_and_receive_message(request).batch_items[0]
    if item.result_status.value != enums.ResultStatus.SUCCESS:
        raise RuntimeError("KMIP %s: %s" % (operation.name, item.result_message))
    return item.response_payload


def kmip_encrypt(client, uid, plaintext):
    params = client._build_cryptographic_parameters(GCM)
    return kmip_call(client, enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(unique_identifier=uid, cryptographic_parameters=params, data=plaintext))


def kmip_setup(target, plaintext, message):
    client = kmip_client(target)
    try:
        aes = client.create(enums.CryptographicAlgorithm.AES, 256, cryptographic_usage_mask=[M.ENCRYPT, M.DECRYPT])
        client.activate(aes)
        public, private = client.create_key_pair(enums.CryptographicAlgorithm.RSA, 2048, public_usage_mask=[M.VERIFY], private_usage_mask=[M.SIGN])
        client.activate(private)
        sealed = kmip_encrypt(client, aes, plaintext)
        return {"aes": aes, "rsa": private, "sealed": sealed}
    finally:
        client.close()


def kmip_operation(case, fixtures, plaintext, message):
    aes, rsa, sealed = fixtures["aes"], fixtures["rsa"], fixtures["sealed"]
    if case == "encrypt-1k":
        def call(client):
            out = kmip_encrypt(client, aes, plaintext)
            if len(out.data) != len(plaintext) or len(out.auth_tag) != 16:
                raise WrongAnswer("Encrypt: not a 1 KiB ciphertext with its tag")
        return call
    if case == "decrypt-1k":
        def call(client):
            params = client._build_cryptographic_parameters(GCM)
            out = kmip_call(client, enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
                unique_identifier=aes, cryptographic_parameters=params, data=sealed.data,
                iv_counter_nonce=sealed.iv_counter_nonce, auth_tag=sealed.auth_tag))
            if out.data != plaintext:
                raise WrongAnswer("Decrypt: not the plaintext encrypted")
        return call
    if case == "sign-rsa2048":
        def call(client):
            if len(client.sign(message, uid=rsa, cryptographic_parameters=PSS)) != 256:
                raise WrongAnswer("Sign: not a 2048-bit signature")
        return call
    raise ValueError(case)


def keyward_stubs(target):
    sys.path.insert(0, target["stubs"])
    from keyward.v1 import crypto_pb2, crypto_pb2_grpc  # noqa: E402

    pki = target["pki"]
    read = lambda path: open(path, "rb").read()
    credentials = grpc.ssl_channel_credentials(read(pki["ca"]), read(pki["key"]), read(pki["cert"]))
    return crypto_pb2, crypto_pb2_grpc, credentials


def keyward_operation(case, target, plaintext, message, pb2):
    keys = target["keys"]
    if case == "encrypt-1k":
        request = pb2.EncryptRequest(name=keys["aes"], plaintext=plaintext)
        def call(stub):
            if len(stub.Encrypt(request, timeout=30).ciphertext) <= len(plaintext):
                raise WrongAnswer("Encrypt: ciphertext shorter than the plaintext")
        return call
    if case == "decrypt-1k":
        request = pb2.DecryptRequest(name=keys["aes"], ciphertext=bytes.fromhex(target["ciphertext1k"]))
        def call(stub):
            if stub.Decrypt(request, timeout=30).plaintext != plaintext:
                raise WrongAnswer("Decrypt: not the plaintext encrypted")
        return call
    if case == "sign-rsa2048":
        request = pb2.SignRequest(name=keys["rsa2048"], message=message)
        def call(stub):
            if len(stub.Sign(request, timeout=30).signature) != 256:
                raise WrongAnswer("Sign: not a 2048-bit signature")
        return call
    raise ValueError(case)


def run_phase(connect, call, concurrency, warm_up, seconds, pids):
    """`concurrency` threads, each with a connection of its own, calling until the window ends."""
    connections = [connect() for _ in range(concurrency)]
    start = time.monotonic() + warm_up
    end = start + seconds
    latencies, errors, first_error = [], [0], [None]
    lock = threading.Lock()
    cpu = {}

    def worker(connection):
        mine = []
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                break
            try:
                call(connection)
            except Exception as err:  # every failure counts, and the first is reported
                with lock:
                    errors[0] += 1
                    first_error[0] = first_error[0] or ("%s: %s" % (type(err).__name__, err))[:300]
                continue
            t1 = time.monotonic()
            if t0 >= start and t1 <= end:
                mine.append(t1 - t0)
        with lock:
            latencies.extend(mine)

    def meter():
        time.sleep(max(0, start - time.monotonic()))
        cpu["start"] = cpu_seconds(pids)
        time.sleep(max(0, end - time.monotonic()))
        cpu["end"] = cpu_seconds(pids)

    threads = [threading.Thread(target=worker, args=(c,)) for c in connections] + [threading.Thread(target=meter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None
    calls = len(latencies)
    return {
        "calls": calls,
        "callsPerSecond": calls / seconds,
        "p50Ms": pick(0.50),
        "p99Ms": pick(0.99),
        "errors": errors[0],
        "firstError": first_error[0],
        "serverCpuUsPerCall": (cpu["end"] - cpu["start"]) * 1e6 / calls if calls else None,
    }, connections


def main():
    plan = json.load(sys.stdin)
    plaintext = bytes.fromhex(plan["plaintext1k"])
    message = bytes.fromhex(plan["message"])
    keyward, kmip = plan["keyward"], plan["kmip"]
    pb2, pb2_grpc, credentials = keyward_stubs(keyward)
    kmip_fixtures = kmip_setup(kmip, plaintext, message)

    def keyward_connect(index=[0]):
        index[0] += 1
        # An option of its own per channel: grpc would otherwise share one connection between them.
        options = [("grpc.use_local_subchannel_pool", 1), ("keyward.bench.channel", index[0])]
        channel = grpc.secure_channel(keyward["address"], credentials, options=options)
        return channel, pb2_grpc.CryptoServiceStub(channel)

    for case in plan["cases"]:
        for concurrency in plan["concurrency"]:
            for name in ("keyward", "kmip"):
                if name == "keyward":
                    op = keyward_operation(case, keyward, plaintext, message, pb2)
                    connect, call, close = keyward_connect, (lambda c, op=op: op(c[1])), (lambda c: c[0].close())
                    pids = keyward["pids"]
                else:
                    op = kmip_operation(case, kmip_fixtures, plaintext, message)
                    connect, call, close = (lambda: kmip_client(kmip)), op, (lambda c: c.close())
                    pids = [kmip["pid"]]
                result, connections = run_phase(connect, call, concurrency, plan["warmUpSeconds"], plan["seconds"], pids)
                for c in connections:
                    close(c)
                result.update({"target": name, "caseId": case, "concurrency": concurrency})
                sys.stdout.write(json.dumps(result) + "\n")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
