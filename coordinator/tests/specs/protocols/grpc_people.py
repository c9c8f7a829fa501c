"""A gRPC server on Python grpcio, the peer the `call` step is tested against: a
second implementation beside Faultbox's own (tonic), so we do not test ourselves
against ourselves. Its message classes are built at run time from descriptors
written out here (no protoc, no generated code); they mirror grpc/people.proto.

Env: PORT; REFLECTION=1 also serves server reflection."""

import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def field(name, number, kind, type_name=None, repeated=False):
    f = F(name=name, number=number, type=kind,
          label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name
    return f


def message(name, *fields):
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


fdp = descriptor_pb2.FileDescriptorProto(name="people.proto", package="people.v1", syntax="proto3")
fdp.enum_type.add(name="Role", value=[
    descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
    for i, n in enumerate(["ROLE_UNSPECIFIED", "ROLE_ADMIN", "ROLE_GUEST"])
])
fdp.message_type.extend([
    message("Address", field("city", 1, F.TYPE_STRING), field("zip", 2, F.TYPE_INT32)),
    message("Person",
            field("id", 1, F.TYPE_INT64),
            field("name", 2, F.TYPE_STRING),
            field("active", 3, F.TYPE_BOOL),
            field("tags", 4, F.TYPE_STRING, repeated=True),
            field("address", 5, F.TYPE_MESSAGE, ".people.v1.Address"),
            field("role", 6, F.TYPE_ENUM, ".people.v1.Role"),
            field("score", 7, F.TYPE_DOUBLE),
            field("lucky", 8, F.TYPE_INT64, repeated=True)),
    message("PutReply", field("person", 1, F.TYPE_MESSAGE, ".people.v1.Person"),
            field("count", 2, F.TYPE_INT32)),
    message("GetRequest", field("id", 1, F.TYPE_INT64)),
    message("HelloRequest", field("name", 1, F.TYPE_STRING)),
    message("HelloReply", field("greeting", 1, F.TYPE_STRING), field("caller", 2, F.TYPE_STRING)),
    message("SlowRequest", field("ms", 1, F.TYPE_INT32)),
    message("SlowReply", field("slept_ms", 1, F.TYPE_INT32)),
])
METHODS = {"Put": ("Person", "PutReply"), "Get": ("GetRequest", "Person"),
           "Hello": ("HelloRequest", "HelloReply"), "Slow": ("SlowRequest", "SlowReply")}
fdp.service.add(name="People", method=[
    descriptor_pb2.MethodDescriptorProto(name=m, input_type=".people.v1." + i, output_type=".people.v1." + o)
    for m, (i, o) in METHODS.items()
])

pool = descriptor_pool.Default()
pool.Add(fdp)
T = {name: message_factory.GetMessageClass(pool.FindMessageTypeByName("people.v1." + name))
     for name in ["Address", "Person", "PutReply", "GetRequest", "HelloRequest", "HelloReply",
                  "SlowRequest", "SlowReply"]}

people = {}
lock = threading.Lock()


def put(req, ctx):
    if not req.name:
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "a person needs a name")
    with lock:
        people[req.id] = req
        return T["PutReply"](person=req, count=len(people))


def get(req, ctx):
    with lock:
        p = people.get(req.id)
    if p is None:
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no person %d" % req.id)
    return p


def hello(req, ctx):
    caller = dict(ctx.invocation_metadata()).get("x-caller", "")
    return T["HelloReply"](greeting="hello, " + req.name, caller=caller)


def slow(req, ctx):
    time.sleep(req.ms / 1000)
    return T["SlowReply"](slept_ms=req.ms)


FNS = {"Put": put, "Get": get, "Hello": hello, "Slow": slow}
handlers = {
    m: grpc.unary_unary_rpc_method_handler(
        FNS[m], request_deserializer=T[i].FromString, response_serializer=T[o].SerializeToString)
    for m, (i, o) in METHODS.items()
}

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("people.v1.People", handlers)])
if os.environ.get("REFLECTION") == "1":
    from grpc_reflection.v1alpha import reflection
    reflection.enable_server_reflection(["people.v1.People", reflection.SERVICE_NAME], server)
server.add_insecure_port("127.0.0.1:%s" % os.environ["PORT"])
server.start()
print("serving on", os.environ["PORT"], flush=True)
signal.signal(signal.SIGTERM, lambda *_: (server.stop(0), sys.exit(0)))
server.wait_for_termination()
