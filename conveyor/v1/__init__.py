"""Generated gRPC/protobuf stubs for the conveyor.v1 wire contract (see protos/). Do not edit."""
