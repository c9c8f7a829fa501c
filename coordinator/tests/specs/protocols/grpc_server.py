"""A gRPC server from another stack (Python grpcio) for the gRPC specs: generic
handlers, no generated code; messages are raw protobuf bytes.

Service demo.Echo:
- Say (unary): answers the request's bytes unchanged.
- Fail (unary): fails with the server's own status, NOT_FOUND "no such order".
- Count (server streaming): the request is a varint N in field 1 (08 NN); answers
  N messages, message i being field 1 = i.
- Join (client streaming): answers the requests' bytes concatenated.
- Chat (bidirectional): answers each request with its bytes, as it comes.

Environment: PORT.
"""

import os
import sys
from concurrent import futures

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(data, i):
    shift = n = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def say(request, context):
    return request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such order")


def count(request, context):
    n = 0
    if request[:1] == b"\x08":
        n, _ = read_varint(request, 1)
    for i in range(1, n + 1):
        yield b"\x08" + varint(i)


def join(requests, context):
    return b"".join(requests)


def chat(requests, context):
    for r in requests:
        yield r


HANDLERS = {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Join": grpc.stream_unary_rpc_method_handler(join),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
}


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", HANDLERS),))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("grpc_server: demo.Echo on %d" % port, file=sys.stderr, flush=True)
    server.wait_for_termination()
